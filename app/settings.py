"""Configuration: msgspec Structs, loaded from one TOML file plus ``CHAT_<SECTION>__<KEY>`` overrides.

Every problem is collected (not just the first) so that one start-up attempt names every key
that is wrong; ``load_settings`` raises ``ConfigError`` carrying one line per problem.
"""

from __future__ import annotations

import copy
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
NonNegFloat = Annotated[float, msgspec.Meta(ge=0)]
PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
NonNegInt = Annotated[int, msgspec.Meta(ge=0)]

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "config" / "default.toml"
ENV_PREFIX = "CHAT_"


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
    resume_memory_mb: PositiveInt = 256
    """Total size of the logs a process holds in memory; past it the oldest ended logs are dropped."""


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
    op_timeout_s: PositiveFloat = 0.25


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


class ConfigError(Exception):
    """Invalid configuration; ``problems`` holds one human line per bad key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _parse_env_value(raw: str) -> Any:
    # TOML syntax for values lets `CHAT_SERVER__PORT=9000` be an int and `["a"]` a list,
    # while a bare word such as `redis://...` stays a string.
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def apply_env_overrides(
    data: dict[str, Any], environ: Mapping[str, str], origins: dict[str, str] | None = None
) -> list[str]:
    """Apply ``CHAT_<SECTION>__<KEY>`` values; ``origins`` learns which variable set which dotted key,
    so that a problem with an overridden value names the variable the user has to fix."""
    problems: list[str] = []
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        if len(parts) != 2 or not all(parts):
            problems.append(f"{name}: expected CHAT_<SECTION>__<KEY>")
            continue
        section, key = parts
        target = data.setdefault(section, {})
        if not isinstance(target, dict):
            problems.append(f"{section}: expected a table")
            continue
        target[key] = _parse_env_value(raw)
        if origins is not None:
            origins[section] = origins.get(section, name)  # an unknown section is reported by its first variable
            origins[f"{section}.{key}"] = name
    return problems


def _check_fields(
    data: Any, cls: type[msgspec.Struct], path: str, problems: list[str], origins: Mapping[str, str] = {}
) -> bool:
    """Check every key of one table on its own, so that all bad keys are reported together.

    Bad keys are removed from ``data`` (a private copy) so that the cross-field checks can still
    run on what is left; returns False when the table itself is unusable. A key that an environment
    variable set (``origins``) is reported under the variable's name: that is what the user must fix.
    """
    if not isinstance(data, dict):
        problems.append(f"{path or 'config'}: expected a table, got {type(data).__name__}")
        return False
    usable = True
    fields = {f.encode_name: f for f in msgspec.structs.fields(cls)}
    for key, value in list(data.items()):
        where = f"{path}.{key}" if path else key
        field = fields.get(key)
        if field is None:
            var = origins.get(where)
            kind = "key" if path else "section"
            problems.append(f"{var}: unknown {kind} {where}" if var else f"{where}: unknown key")
            del data[key]
            continue
        nested = _struct_type(field.type)
        if nested is not None:
            if not _check_fields(value, nested, where, problems, origins):
                del data[key]
        elif key in _TABLE_LISTS and isinstance(value, list):
            value[:] = [
                item
                for i, item in enumerate(value)
                if _check_fields(item, _TABLE_LISTS[key], f"{where}[{i}]", problems)
            ]
        else:
            try:
                msgspec.convert(value, field.type)
            except msgspec.ValidationError as exc:
                var = origins.get(where)
                problems.append(f"{var}: invalid value for {where}: {exc}" if var else f"{where}: {exc}")
                del data[key]
                usable = usable and not field.required
    for name, field in fields.items():
        if field.required and name not in data:
            problems.append(f"{path}.{name}: required key missing")
            usable = False
    return usable


def _mention_variable(line: str, origins: Mapping[str, str]) -> str:
    """A cross-field problem keeps its key first and says which variable set that key, if one did."""
    var = origins.get(line.split(":", 1)[0])
    return f"{line} (set by {var})" if var else line


#: Arrays of tables whose entries are checked one by one, like sections.
_TABLE_LISTS: dict[str, type[msgspec.Struct]] = {"deployments": DeploymentSettings, "keys": KeySettings}


def _struct_type(tp: Any) -> type[msgspec.Struct] | None:
    return tp if isinstance(tp, type) and issubclass(tp, msgspec.Struct) else None


def _cross_checks(settings: Settings, environ: Mapping[str, str]) -> list[str]:
    problems: list[str] = []
    names = [d.name for d in settings.models.deployments]
    if not names:
        problems.append("models.deployments: at least one deployment is required")
    _assign_ids(settings.models.deployments)
    seen: set[str] = set()
    for i, dep in enumerate(settings.models.deployments):
        where = f"models.deployments[{i}]"
        # Several deployments may share a name (a group); their ids tell them apart.
        if dep.id in seen:
            problems.append(f"{where}.id: duplicate deployment id {dep.id!r}")
        seen.add(dep.id)
        for fb in dep.fallbacks:
            if fb not in names:
                problems.append(f"{where}.fallbacks: {fb!r} is not a configured deployment name")
            elif fb == dep.name:
                problems.append(f"{where}.fallbacks: a deployment cannot fall back to its own group")
        if "/" not in dep.litellm_model:
            problems.append(f"{where}.litellm_model: expected '<provider>/<model>', got {dep.litellm_model!r}")
        if dep.api_key_env and dep.api_key_env not in environ:
            problems.append(f"{where}.api_key_env: environment variable {dep.api_key_env} is not set")
    if settings.cache.backend == "redis" and not settings.cache.redis_url:
        problems.append("cache.redis_url: required when cache.backend is 'redis'")
    if settings.cache.redis_url and not settings.cache.redis_url.startswith(("redis://", "rediss://", "unix://")):
        problems.append("cache.redis_url: expected a redis:// or rediss:// URL")
    if settings.streaming.resume_store == "redis" and not settings.redis.url:
        problems.append("redis.url: required when streaming.resume_store is 'redis'")
    if settings.redis.url and not settings.redis.url.startswith(("redis://", "rediss://", "unix://")):
        problems.append("redis.url: expected a redis:// or rediss:// URL")
    if settings.server.api_keys_env and not environ.get(settings.server.api_keys_env):
        problems.append(f"server.api_keys_env: environment variable {settings.server.api_keys_env} is not set or empty")
    problems += _key_checks(settings, environ)
    if settings.streaming.heartbeat_s >= settings.streaming.idle_timeout_s:
        problems.append("streaming.heartbeat_s: must be shorter than streaming.idle_timeout_s")
    return problems


def _assign_ids(deployments: list[DeploymentSettings]) -> None:
    """Default ids: "<name>-<n>", n counting the group's members from 1 in file order."""
    counts: dict[str, int] = {}
    for dep in deployments:
        counts[dep.name] = counts.get(dep.name, 0) + 1
        if not dep.id:
            dep.id = f"{dep.name}-{counts[dep.name]}"


def _key_checks(settings: Settings, environ: Mapping[str, str]) -> list[str]:
    problems: list[str] = []
    seen: set[str] = set()
    for i, key in enumerate(settings.keys):
        where = f"keys[{i}]"
        if key.name in seen or key.name == "default":
            problems.append(f"{where}.name: {key.name!r} is taken (unique names; 'default' is server.api_keys_env's)")
        seen.add(key.name)
        if bool(key.key_env) == bool(key.key_sha256):
            problems.append(f"{where}: set exactly one of key_env and key_sha256")
        if key.key_env and not environ.get(key.key_env):
            problems.append(f"{where}.key_env: environment variable {key.key_env} is not set or empty")
        if key.key_sha256 and not re.fullmatch(r"[0-9a-fA-F]{64}", key.key_sha256):
            problems.append(f"{where}.key_sha256: expected 64 hex digits (the key's SHA-256)")
    if settings.rate_limit.backend == "redis" and not settings.redis.url:
        problems.append("redis.url: required when rate_limit.backend is 'redis'")
    if settings.redis.url and not settings.redis.url.startswith(("redis://", "rediss://", "unix://")):
        problems.append("redis.url: expected a redis:// or rediss:// URL")
    return problems


def settings_from_dict(data: dict[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
    environ = os.environ if environ is None else environ
    data = copy.deepcopy(data)
    origins: dict[str, str] = {}
    problems = apply_env_overrides(data, environ, origins)
    _check_fields(data, Settings, "", problems, origins)
    try:
        settings = msgspec.convert(data, Settings)
    except msgspec.ValidationError as exc:
        # Something unusable is left (a deployment without its name, say): report what we have.
        raise ConfigError(problems or [f"config: {exc}"]) from exc
    problems += [_mention_variable(line, origins) for line in _cross_checks(settings, environ)]
    if problems:
        raise ConfigError(problems)
    return settings


def config_path(environ: Mapping[str, str]) -> Path:
    """The file ``load_settings`` reads: ``CHAT_CONFIG`` when set, else the shipped default (never both)."""
    return Path(environ.get("CHAT_CONFIG") or DEFAULT_CONFIG_PATH)


def load_settings(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    environ = os.environ if environ is None else environ
    file = Path(path) if path else config_path(environ)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"CHAT_CONFIG: cannot read {file}: {exc.strerror or exc}"]) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{file}: not valid TOML: {exc}"]) from exc
    return settings_from_dict(data, environ)
