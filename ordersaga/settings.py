"""One settings class for every process (environment: ORDERSAGA_<SECTION>__<KEY>)."""

from __future__ import annotations

import os
import re
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ordersaga.domain import SagaPolicy

# A process started by another (the dev stack's children, the tests' CLI calls) gets the parent's
# resolved settings whole, as JSON in this one variable, instead of one variable per field.
SETTINGS_JSON_VAR = "ORDERSAGA_SETTINGS_JSON"

# The embedded nats-server's own user, and the file in the data directory with its password.
EMBEDDED_NATS_USER = "ordersaga"
EMBEDDED_NATS_PASSWORD_FILE = "nats-password"


class TlsSettings(BaseModel):
    """TLS for one connection. The server's certificate is always verified: against `ca_file`
    (PEM) when set, otherwise against the system's trust store, and for the host connected to
    (or `server_name`). `cert_file` and `key_file` add a client certificate (mutual TLS).
    Setting any of these turns TLS on; so does `enabled`, for a server with a publicly trusted
    certificate."""

    enabled: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None

    @property
    def on(self) -> bool:
        return self.enabled or any((self.ca_file, self.cert_file, self.key_file, self.server_name))

    @model_validator(mode="after")
    def _pair(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (a client certificate)")
        return self


# Secrets are plain strings kept out of repr (so out of logs and tracebacks) rather than
# SecretStr: the dev stack hands its children their settings as JSON, and SecretStr would mask
# them there. Set them from a secret store (a Kubernetes Secret as env), never in a file in git.
def _secret(description: str) -> Any:
    return Field(default=None, repr=False, description=description)


# Default ports for the embedded stack sit away from the standard ones (5432, 4222, 7233, 8233,
# 8000), so `ordersaga dev` runs beside servers that already use those.


class DatabaseSettings(BaseModel):
    # A validation error quotes its input: that would put a secret in a traceback.
    model_config = ConfigDict(hide_input_in_errors=True)

    url: str | None = Field(
        default=None,
        description="SQLAlchemy URL (postgresql+asyncpg://user@host:port/db). Unset: the "
        "embedded Postgres.",
    )
    # Overrides a password in the URL, so the URL can live in a ConfigMap and this in a Secret.
    password: str | None = _secret("The database user's password.")
    tls: TlsSettings = TlsSettings()
    embedded_port: int = 15432
    pool_size: int = 10
    statement_timeout_ms: int = 15_000
    idle_in_transaction_timeout_ms: int = 30_000
    # Every checkout refuses a connection whose server closed it (asyncpg has seen the socket
    # close), which costs nothing. This also pings the server at each checkout, three round
    # trips: for a proxy in front of Postgres that keeps a client's socket open when the
    # server behind it goes.
    pre_ping: bool = False


class NatsSettings(BaseModel):
    # A validation error quotes its input: that would put a secret in a traceback.
    model_config = ConfigDict(hide_input_in_errors=True)

    url: str | None = Field(
        default=None,
        description="nats://host:port, comma-separated for a cluster's seed servers. Unset: the "
        "embedded nats-server.",
    )
    # One way to authenticate: user and password, a token, or a credentials file (NKey + JWT,
    # as NATS accounts and Synadia Cloud issue). The embedded server has a user of its own.
    user: str | None = None
    password: str | None = _secret("The NATS user's password.")
    token: str | None = _secret("A NATS authentication token.")
    creds_file: Path | None = None
    tls: TlsSettings = TlsSettings()

    @model_validator(mode="after")
    def _one_way_in(self) -> NatsSettings:
        if (self.user is None) != (self.password is None):
            raise ValueError("user and password go together")
        ways = [self.user is not None, self.token is not None, self.creds_file is not None]
        if sum(ways) > 1:
            raise ValueError("authenticate one way: user and password, token, or creds_file")
        return self

    embedded_port: int = 14222
    embedded_monitor_port: int = 18222
    # `ordersaga dev --cluster`: node i of the embedded cluster listens on embedded_port + i,
    # its monitor on embedded_monitor_port + i, and its cluster routes on this + i.
    embedded_cluster_port: int = 16222
    stream: str = "ORDERS"
    subject_prefix: str = "orders"
    # Longer than any activity's retry span, so a republished event is always deduplicated.
    duplicate_window: timedelta = timedelta(hours=24)
    # The event store is the source of truth: the bus keeps a month for catch-up and replays;
    # older history is rebuilt from the store. Zero keeps everything.
    max_age: timedelta = timedelta(days=30)
    storage: Literal["file", "memory"] = "file"
    # R1 on the embedded single server; R3 on a cluster.
    replicas: int = Field(default=1, ge=1, le=5)
    publish_timeout: float = 5.0
    # Publishes waiting for their ack at once, per process (the rest queue for a slot).
    max_in_flight: int = Field(default=256, ge=1)
    # The stream projectors read: ORDERS re-keyed by a subject-mapping partition of the order id.
    # Changing the count re-partitions only new messages: rebuild the read models after.
    partitioned_stream: str = "ORDERS_PARTITIONED"
    partitioned_prefix: str = "orders-p"
    partitions: int = Field(default=4, ge=1, le=256)


class ProjectorSettings(BaseModel):
    batch: int = Field(default=256, ge=1, le=10_000)
    # After a transaction of partial batches, how long a projector process waits before the next:
    # what arrives meanwhile, on any partition it holds, is applied together. The read models
    # trail the bus by up to this much more; a full batch (a backlog) goes at once in its own.
    linger_s: float = Field(default=0.05, ge=0, le=5)
    # Deliveries of one event before it is dead-lettered; JetStream's own max_deliver is set a
    # little above, as a backstop.
    max_attempts: int = Field(default=5, ge=1)
    backoff_s: list[float] = [0.5, 2.0, 5.0, 15.0, 30.0]
    # A delivery not acked within this is sent again (a dead process's in-flight batch).
    ack_wait_s: float = Field(default=15.0, gt=0)
    # How often a projector process looks at who else runs and rebalances partitions.
    claim_interval_s: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _linger_within_ack_wait(self) -> ProjectorSettings:
        # Fetched messages wait out the linger (and their partition's transaction in flight)
        # with their ack wait running: a linger as long as the ack wait would have them
        # delivered again (and counted).
        if self.linger_s >= self.ack_wait_s:
            raise ValueError(
                f"linger_s ({self.linger_s}) must be shorter than ack_wait_s ({self.ack_wait_s})"
            )
        return self


class RelaySettings(BaseModel):
    # Relays of one name share a lease and a checkpoint: one publishes, the others stand by.
    name: str = "relay"
    # Events read from the store's feed and published per round (one checkpoint write each).
    batch: int = Field(default=256, ge=1, le=10_000)
    # After a partial batch, the next read of the feed waits until this long after the previous
    # one began: events that arrive meanwhile go in one round (one read, one checkpoint write,
    # their publishes flushed together, and the projector fetches them together) rather than one
    # round each. An event after a quiet spell goes at once; under a steady flow each waits up to
    # this much longer for JetStream. What it saves per saga: the README's Benchmark section.
    linger_s: float = Field(default=0.05, ge=0, le=1)
    # How often a standby relay tries to take the lease: the longest a dead relay's work waits.
    lease_interval_s: float = Field(default=1.0, gt=0)


class NotifierSettings(BaseModel):
    # A validation error quotes its input: that would put a secret in a traceback.
    model_config = ConfigDict(hide_input_in_errors=True)

    durable: str = "notifier"
    # Orders handled at once: a few stuck in the API's min_version wait leave room for the rest.
    concurrency: int = Field(default=64, ge=1, le=1024)
    # Where the notifier asks for the order (event notification). Unset: this API's address.
    api_url: str | None = None
    # Its API key (role client): `ordersaga keys create --role client --name notifier`. The dev
    # stack makes one. Plain text here so the dev stack can hand it to its child process.
    api_key: str | None = _secret("The notifier's API key (role client).")


class TemporalSettings(BaseModel):
    # A validation error quotes its input: that would put a secret in a traceback.
    model_config = ConfigDict(hide_input_in_errors=True)

    address: str | None = Field(default=None, description="host:port. Unset: the embedded server.")
    # Temporal Cloud's API-key authentication (TLS is then on, with the system's trust store).
    api_key: str | None = _secret("A Temporal Cloud API key.")
    tls: TlsSettings = TlsSettings()
    embedded_port: int = 17233
    embedded_ui_port: int = 18233
    namespace: str = "default"
    task_queue: str = "orders"
    max_concurrent_activities: int = 200
    max_concurrent_workflow_tasks: int = 200
    # The worker runs the saga outside Temporal's sandbox, which costs about a quarter of its
    # CPU per saga (bench/saga_e2e.py). Every workflow test and the replay of every recorded
    # history run inside it (the SDK's default), so a call that breaks determinism fails in
    # `make test`; turn it on here to have the worker check too.
    workflow_sandbox: bool = False


class ApiSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 18000
    # How long a command route waits for the workflow to answer an update.
    update_timeout: float = 10.0
    # The longest `GET /orders/{id}?min_version=N` waits for the read model to catch up.
    min_version_timeout: float = 5.0
    # While it waits, a look this often even without a notification from the projector.
    min_version_poll_s: float = 1.0
    # At most this many min_version waits at once per process; more are a 503 with Retry-After.
    max_min_version_waits: int = Field(default=256, ge=1)
    # The largest request body taken; a larger one is a 413 before it is read whole.
    max_body_bytes: int = Field(default=65_536, ge=1_024)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ORDERSAGA_",
        env_nested_delimiter="__",
        extra="forbid",
        hide_input_in_errors=True,
    )

    data_dir: Path = Path(".ordersaga")
    log_level: str = "INFO"
    database: DatabaseSettings = DatabaseSettings()
    nats: NatsSettings = NatsSettings()
    temporal: TemporalSettings = TemporalSettings()
    api: ApiSettings = ApiSettings()
    # The domain's own dataclass: ORDERSAGA_SAGA__STEP_MAX_ATTEMPTS and so on.
    saga: SagaPolicy = SagaPolicy()
    projector: ProjectorSettings = ProjectorSettings()
    relay: RelaySettings = RelaySettings()
    notifier: NotifierSettings = NotifierSettings()

    def database_url(self) -> str:
        if self.database.url is None:
            return (
                f"postgresql+asyncpg://postgres@127.0.0.1:{self.database.embedded_port}/ordersaga"
            )
        return self.database.url

    def nats_url(self) -> str:
        return self.nats.url or f"nats://127.0.0.1:{self.nats.embedded_port}"

    def nats_where(self) -> str:
        """The NATS URL(s) for messages: any `user:password@` in them left out."""
        return re.sub(r"//[^/@,]*@", "//", self.nats_url())

    def nats_auth(self) -> NatsSettings:
        """The NATS settings with the credentials to send. Unset on the embedded server (a command
        run beside `make dev`, such as `ordersaga events tail`): the embedded server's own user,
        with the password `make dev` keeps in the data directory."""
        ns = self.nats
        if ns.url is None and ns.user is None and ns.token is None and ns.creds_file is None:
            path = self.data_dir / EMBEDDED_NATS_PASSWORD_FILE
            if path.exists():
                password = path.read_text().strip()
                return ns.model_copy(update={"user": EMBEDDED_NATS_USER, "password": password})
        return ns

    def api_url(self) -> str:
        return self.notifier.api_url or f"http://{self.api.host}:{self.api.port}"

    def temporal_address(self) -> str:
        return self.temporal.address or f"127.0.0.1:{self.temporal.embedded_port}"

    def as_child_env(self) -> dict[str, str]:
        """The environment that hands a child process exactly these settings."""
        return {SETTINGS_JSON_VAR: self.model_dump_json()}


@lru_cache
def get_settings() -> Settings:
    """Load settings once per process; a bad value fails here with pydantic's message."""
    handed_down = os.environ.get(SETTINGS_JSON_VAR)
    if handed_down:
        return Settings.model_validate_json(handed_down)
    return Settings()
