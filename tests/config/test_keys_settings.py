"""`[[keys]]`, `[rate_limit]` and `[redis]` validation: every problem named, one line each."""

from __future__ import annotations

import hashlib

import pytest

from app.access.keys import GatewayKeys
from app.config.settings import ConfigError, load_settings, settings_from_dict
from app.domain.errors import Unauthenticated

BASE = {"models": {"deployments": [{"name": "demo", "litellm_model": "demo/demo"}]}}


def test_bad_keys_are_each_reported() -> None:
    data = {
        **BASE,
        "rate_limit": {"backend": "redis", "on_backend_error": "maybe"},
        "keys": [
            {"name": "a", "key_env": "A_KEY", "key_sha256": "00" * 32},
            {"name": "a", "key_env": "MISSING"},
            {"name": "default", "key_sha256": "xyz"},
            {"name": "b"},
            {"name": "c", "key_env": "A_KEY", "budget_window": "week", "colour": "red"},
        ],
    }
    with pytest.raises(ConfigError) as info:
        settings_from_dict(data, {"A_KEY": "k"})
    problems = "\n".join(info.value.problems)
    for expected in (
        "rate_limit.on_backend_error",
        "keys[0]: set exactly one of key_env and key_sha256",
        "keys[1].name: 'a' is taken",
        "keys[1].key_env: environment variable MISSING is not set",
        "keys[2].name: 'default' is taken",
        "keys[2].key_sha256: expected 64 hex digits",
        "keys[3]: set exactly one of key_env and key_sha256",
        "keys[4].budget_window",
        "keys[4].colour: unknown key",
        "redis.url: required when rate_limit.backend is 'redis'",
    ):
        assert expected in problems, problems


def test_default_config_documents_and_accepts_the_new_sections() -> None:
    settings = load_settings(environ={})
    assert settings.rate_limit.backend == "memory" and settings.rate_limit.on_backend_error == "open"
    assert settings.keys == [] and settings.redis.url == ""


def test_named_key_limits_override_the_defaults_and_keys_are_digests() -> None:
    data = {
        **BASE,
        "server": {"api_keys_env": "GW"},
        "rate_limit": {"requests_per_minute": 10, "concurrent_streams": 2},
        "keys": [
            {"name": "team", "key_env": "TEAM", "requests_per_minute": 0, "models": ["de*"]},
            {"name": "ci", "key_sha256": hashlib.sha256(b"ci-key").hexdigest()},
        ],
    }
    environ = {"GW": "plain", "TEAM": "team-key"}
    keys = GatewayKeys.from_settings(settings_from_dict(data, environ), environ)
    team, ci, plain = keys.check("team-key"), keys.check("ci-key"), keys.check("plain")
    assert (team.name, team.policy.requests_per_minute, team.policy.concurrent_streams) == ("team", 0, 2)
    assert team.policy.allows("demo") and not team.policy.allows("other")
    assert (ci.name, ci.policy.requests_per_minute) == ("ci", 10)
    assert (plain.name, plain.bucket.startswith("default.")) == ("default", True)
    assert "team-key" not in repr(keys.__dict__) and "plain" not in repr(keys.__dict__)
    with pytest.raises(Unauthenticated):
        keys.check("team-key ")
