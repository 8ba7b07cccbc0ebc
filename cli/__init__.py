"""The `ordersaga` command: the dev stack, each process on its own, and the operator tools."""
