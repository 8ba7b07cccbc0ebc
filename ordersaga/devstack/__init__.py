"""The embedded stack: Postgres, nats-server and the Temporal dev server from Python wheels, plus
the worker, projector, notifier and API processes, started and supervised by one asyncio program
(`ports`: free ports and isolated settings; `servers`: the servers and their readiness probes;
`supervisor`: one supervised child; `stack`: DevStack, which orders them).

Why our own supervisor and not supervisord, circus or honcho: honcho runs a Procfile without
readiness probes or restarts, and supervisord and circus are daemons driven over RPC (circus also
brings ZeroMQ), with "stayed up N seconds" instead of a probe per part and no start order by
dependency. What we need—probe each part, start in order and stop in reverse, restart with
backoff, let tests and benchmarks SIGKILL a part through a Python object, and have every child die
with the supervisor—comes to some 150 lines on asyncio subprocesses, with no daemon beside it.
"""

from ordersaga.devstack.ports import free_port, isolated_settings
from ordersaga.devstack.servers import find_tool
from ordersaga.devstack.stack import DevStack
from ordersaga.devstack.supervisor import Managed, StackError

__all__ = ["DevStack", "Managed", "StackError", "find_tool", "free_port", "isolated_settings"]
