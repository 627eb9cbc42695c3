"""The configuration's schema: one msgspec Struct per section, with the defaults and bounds of every key.

Loading (the TOML file, ``CHAT_<SECTION>__<KEY>`` overrides, cross-checks) is ``app/config/settings.py``,
which is also where the rest of the code imports these from.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
NonNegFloat = Annotated[float, msgspec.Meta(ge=0)]
PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
NonNegInt = Annotated[int, msgspec.Meta(ge=0)]


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8000
    env: Literal["development", "production"] = "development"
    max_body_bytes: PositiveInt = 1_048_576
    api_keys_env: str = ""
    """Names an environment variable holding comma-separated gateway keys; empty = no auth."""
    cors_origins: list[str] = []
    log_bodies: bool = False
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    workers: PositiveInt = 1
    header_timeout_s: PositiveFloat = 10.0
    """From a connection's first moment (or a kept-alive request's first byte) to its headers' end."""
    body_timeout_s: PositiveFloat = 30.0
    """Longest pause while a request body arrives."""
    keepalive_s: PositiveFloat = 15.0
    """Idle time allowed between two requests on one connection."""
    drain_s: NonNegFloat = 30.0
    """On SIGTERM/SIGINT, how long in-flight requests and streams get to finish once the listener closed."""
    shutdown_delay_s: NonNegFloat = 0.0
    """On SIGTERM/SIGINT, how long the server keeps accepting (readiness already 503) before it closes
    its listener, so that load balancers notice first."""
    max_connections: PositiveInt = 4096
    """Open connections (HTTP and WebSocket) per worker; past it, a new one gets a 503. Capped by the
    process's file-descriptor limit, which start-up raises to its hard limit."""


class StreamingSettings(_Section):
    heartbeat_s: PositiveFloat = 15.0
    status_window_s: NonNegFloat = 1.0
    first_token_timeout_s: PositiveFloat = 60.0
    idle_timeout_s: PositiveFloat = 60.0
    write_timeout_s: PositiveFloat = 30.0
    """A client whose socket accepts nothing for this long is dropped (and its upstream call cancelled)."""
    resume_ttl_s: PositiveFloat = 300.0
    """How long a stream's log stays resumable after the stream ended."""
    detach_grace_s: NonNegFloat = 0.0
    """How long the upstream call goes on after its client left, waiting for a resume (0: cancelled at once)."""
    resume_store: Literal["memory", "redis"] = "memory"
    """Where stream logs are kept: this process's memory, or the ``[redis] url`` shared by replicas."""
    resume_max_events: NonNegInt = 10_000
    """Events kept per stream's log (the oldest go first); 0 turns stream logs, and resuming, off."""
    resume_memory_mb: NonNegInt = 0
    """Total size of the logs a process holds in memory; past it the oldest ended logs are dropped.
    0 (auto): 1/32 of the memory the process may use (cgroup limit, else physical), 8 to 64 MiB."""


class WebSocketSettings(_Section):
    ping_s: PositiveFloat = 20.0
    max_inflight: PositiveInt = 8
    max_frame_bytes: PositiveInt = 1_048_576
    send_queue_frames: PositiveInt = 1024


class CacheSettings(_Section):
    enabled: bool = False
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = ""
    ttl_s: PositiveFloat = 3600.0
    max_entries: PositiveInt = 10_000
    op_timeout_s: PositiveFloat = 0.5
    """Bound on each Redis call. Under CPU load alone (2 cores, 4 busy processes, SSE c=20 + JSON c=8)
    0.1 s tripped the circuit breaker once in 90 s and 0.25 s and 0.5 s never did
    (loadtests/redis_cpu_load.py); 0.5 s keeps a margin. Its price is paid once per outage, by the
    calls in flight when Redis stalls: the breaker refuses the rest at once."""


class RateLimitSettings(_Section):
    """Defaults for every gateway key (0 = unlimited) and where the counters live."""

    requests_per_minute: NonNegInt = 0
    tokens_per_minute: NonNegInt = 0
    concurrent_streams: NonNegInt = 0
    backend: Literal["memory", "redis"] = "memory"
    on_backend_error: Literal["open", "closed"] = "open"
    lease_ttl_s: PositiveFloat = 30.0
    """A Redis concurrency lease lives this long unless its replica refreshes it (a dead one cannot)."""
    op_timeout_s: PositiveFloat = 0.5
    """Bound on each Redis call of the limiter. Its Redis server's circuit breaker is shared with the
    cache and the resume store, and any timeout opens it for all three, so the bound must not fire on
    a healthy Redis under CPU load: with 4 busy processes on 2 cores (loadtests/redis_cpu_load.py
    --features all) 0.1 s and 0.25 s tripped once in 40 s and 0.5 s never did."""


class RedisSettings(_Section):
    url: str = ""
    """The one Redis for every feature whose backend is "redis" (cache.redis_url still wins for the cache)."""


class KeySettings(_Section):
    """A named gateway key: the key itself never appears in the file, only its env var or SHA-256."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
    key_env: str = ""
    key_sha256: str = ""
    models: list[str] | None = None
    """Allow-list of public model names (``*`` globs); None = every model."""
    requests_per_minute: NonNegInt | None = None
    tokens_per_minute: NonNegInt | None = None
    concurrent_streams: NonNegInt | None = None
    budget_usd: NonNegFloat | None = None
    budget_window: Literal["day", "month", "total"] = "month"


class ModelInfoOverride(_Section):
    """Metadata for models LiteLLM does not know (local models); each value wins over LiteLLM's."""

    mode: str | None = None
    max_input_tokens: int | None = None
    max_output_tokens: int | None = None
    input_cost_per_mtok: float | None = None
    output_cost_per_mtok: float | None = None
    capabilities: list[str] | None = None
    owned_by: str | None = None


class DeploymentSettings(_Section):
    name: Annotated[str, msgspec.Meta(min_length=1)]
    """The public model name; deployments sharing one form a group (one model, load-balanced)."""
    litellm_model: Annotated[str, msgspec.Meta(min_length=1)]
    id: str = ""
    """Unique per deployment (metrics, logs, readiness); empty = "<name>-<n>", n counting within the group."""
    weight: PositiveFloat = 1.0
    """simple-shuffle picks a group member with probability proportional to its weight."""
    api_base: str = ""
    api_key_env: str = ""
    timeout_s: PositiveFloat = 600.0
    fallbacks: list[str] = []
    num_retries: NonNegInt = 0
    fast_path: bool = True
    """Relay OpenAI-wire providers' streams directly; false forces the full LiteLLM path."""
    info: ModelInfoOverride = msgspec.field(default_factory=ModelInfoOverride)


class ModelsSettings(_Section):
    refresh_s: PositiveFloat = 300.0
    routing: Literal["simple-shuffle", "least-busy", "latency-based"] = "simple-shuffle"
    """How a request picks a deployment of its group (LiteLLM Router strategies of the same names)."""
    allowed_fails: NonNegInt = 3
    """Failures a deployment may have in a minute before it rests for ``cooldown_s``."""
    cooldown_s: NonNegFloat = 0.0
    """How long a failing deployment rests (no calls); 0 = never cooled down."""
    deployments: list[DeploymentSettings] = []


class TracingSettings(_Section):
    enabled: bool = False
    otlp_endpoint: str = "http://127.0.0.1:4318/v1/traces"
    """The OTLP/HTTP traces endpoint of a collector (protobuf over HTTP)."""
    sample_ratio: Annotated[float, msgspec.Meta(ge=0, le=1)] = 1.0
    """Share of new traces recorded; a client's sampled ``traceparent`` is always followed."""
    service_name: str = "chat-gateway"


class Settings(_Section):
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    streaming: StreamingSettings = msgspec.field(default_factory=StreamingSettings)
    websocket: WebSocketSettings = msgspec.field(default_factory=WebSocketSettings)
    cache: CacheSettings = msgspec.field(default_factory=CacheSettings)
    rate_limit: RateLimitSettings = msgspec.field(default_factory=RateLimitSettings)
    redis: RedisSettings = msgspec.field(default_factory=RedisSettings)
    keys: list[KeySettings] = []
    models: ModelsSettings = msgspec.field(default_factory=ModelsSettings)
    tracing: TracingSettings = msgspec.field(default_factory=TracingSettings)

    @property
    def production(self) -> bool:
        return self.server.env == "production"

    def deployment(self, name: str) -> DeploymentSettings | None:
        """The first deployment of the group ``name``."""
        for dep in self.models.deployments:
            if dep.name == name:
                return dep
        return None

    def group(self, name: str) -> list[DeploymentSettings]:
        return [dep for dep in self.models.deployments if dep.name == name]
