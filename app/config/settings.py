"""Configuration: the schema's Structs (``config/schema.py``), loaded from one TOML file plus
``CHAT_<SECTION>__<KEY>`` overrides.

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
from typing import Any

import msgspec

from app.config.schema import (
    CacheSettings,
    DeploymentSettings,
    KeySettings,
    ModelInfoOverride,
    ModelsSettings,
    RateLimitSettings,
    RedisSettings,
    ServerSettings,
    Settings,
    StreamingSettings,
    TracingSettings,
    WebSocketSettings,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "CacheSettings",
    "ConfigError",
    "DeploymentSettings",
    "KeySettings",
    "ModelInfoOverride",
    "ModelsSettings",
    "RateLimitSettings",
    "RedisSettings",
    "ServerSettings",
    "Settings",
    "StreamingSettings",
    "TracingSettings",
    "WebSocketSettings",
    "config_path",
    "load_settings",
    "settings_from_dict",
]

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[2] / "config" / "default.toml"
ENV_PREFIX = "CHAT_"


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
