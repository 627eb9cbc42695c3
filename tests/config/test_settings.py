"""Configuration validation (API.md 6): msgspec Structs, one problem line per bad key, exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from app.config.settings import (
    DEFAULT_CONFIG_PATH,
    ConfigError,
    Settings,
    load_settings,
    settings_from_dict,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
SUBPROCESS_TIMEOUT_S = 30

#: The sections API.md 6 lists, and the keys it names in each.
CONTRACT_SECTIONS: dict[str, set[str]] = {
    "server": {"host", "port", "env", "max_body_bytes", "api_keys_env", "cors_origins", "drain_s", "shutdown_delay_s"},
    "streaming": {
        "heartbeat_s",
        "status_window_s",
        "first_token_timeout_s",
        "idle_timeout_s",
        "resume_ttl_s",
        "detach_grace_s",
        "resume_store",
        "resume_max_events",
    },
    "websocket": {"ping_s", "max_inflight", "max_frame_bytes"},
    "cache": {"enabled", "backend", "redis_url", "ttl_s", "max_entries"},
    "rate_limit": {"requests_per_minute", "tokens_per_minute", "concurrent_streams", "backend", "on_backend_error"},
    "redis": {"url"},  # [[keys]] ships commented out: a live entry needs its key's env var
    "models": {"refresh_s", "deployments"},
    "tracing": {"enabled", "otlp_endpoint", "sample_ratio", "service_name"},
}
CONTRACT_DEPLOYMENT_KEYS = {"name", "litellm_model", "api_base", "api_key_env", "timeout_s", "fallbacks"}


def minimal() -> dict[str, Any]:
    """The smallest valid configuration: two deployments, everything else defaulted."""
    return {
        "models": {
            "deployments": [
                {"name": "alpha", "litellm_model": "openai/alpha"},
                {"name": "beta", "litellm_model": "openai/beta"},
            ]
        }
    }


def problems_of(data: dict[str, Any], environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        settings_from_dict(data, environ={} if environ is None else environ)
    assert info.value.problems, "a ConfigError must carry at least one problem line"
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def assert_one_problem_naming(problems: list[str], key: str) -> str:
    """Exactly one line, and it starts with the dotted key (`key: what is wrong`)."""
    assert len(problems) == 1, problems
    line = problems[0]
    assert line.startswith(f"{key}:"), f"{line!r} does not name {key!r}"
    assert "\n" not in line
    return line


def deployment(data: dict[str, Any], i: int = 0) -> dict[str, Any]:
    deps: list[dict[str, Any]] = data["models"]["deployments"]
    return deps[i]


# ---- a valid configuration ---------------------------------------------------------------------


def test_minimal_config_is_valid_and_defaults_apply() -> None:
    settings = settings_from_dict(minimal(), environ={})
    assert isinstance(settings, Settings)
    assert [d.name for d in settings.models.deployments] == ["alpha", "beta"]
    assert settings.server.port == 8000
    assert settings.server.env == "development"
    assert settings.cache.backend == "memory"
    assert settings.deployment("beta") is not None
    assert settings.deployment("gamma") is None


def test_api_key_env_that_is_set_is_accepted() -> None:
    data = minimal()
    deployment(data)["api_key_env"] = "ALPHA_KEY"
    settings = settings_from_dict(data, environ={"ALPHA_KEY": "sk-test"})
    assert settings.models.deployments[0].api_key_env == "ALPHA_KEY"


def test_valid_fallback_is_accepted() -> None:
    data = minimal()
    deployment(data)["fallbacks"] = ["beta"]
    settings = settings_from_dict(data, environ={})
    assert settings.models.deployments[0].fallbacks == ["beta"]


# ---- one kind of mistake at a time ------------------------------------------------------------


def test_unknown_top_level_section() -> None:
    data = minimal()
    data["serverr"] = {"port": 1}
    assert_one_problem_naming(problems_of(data), "serverr")


def test_unknown_key_in_section() -> None:
    data = minimal()
    data["server"] = {"prot": 9000}
    line = assert_one_problem_naming(problems_of(data), "server.prot")
    assert "unknown" in line


def test_unknown_key_in_deployment() -> None:
    data = minimal()
    deployment(data, 1)["api_kee_env"] = "X"
    line = assert_one_problem_naming(problems_of(data), "models.deployments[1].api_kee_env")
    assert "unknown" in line


def test_section_that_is_not_a_table() -> None:
    data = minimal()
    data["server"] = 5
    assert_one_problem_naming(problems_of(data), "server")


def test_wrong_type() -> None:
    data = minimal()
    data["server"] = {"port": "x"}
    line = assert_one_problem_naming(problems_of(data), "server.port")
    assert "int" in line


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("streaming", "heartbeat_s", 0),
        ("streaming", "first_token_timeout_s", -1),
        ("streaming", "status_window_s", -0.5),
        ("server", "port", 70000),
        ("server", "max_body_bytes", 0),
        ("server", "drain_s", -1),
        ("server", "shutdown_delay_s", -0.1),
        ("websocket", "max_inflight", 0),
        ("cache", "ttl_s", -5),
        ("rate_limit", "requests_per_minute", -1),
    ],
)
def test_out_of_range(section: str, key: str, value: float) -> None:
    data = minimal()
    data[section] = {key: value}
    assert_one_problem_naming(problems_of(data), f"{section}.{key}")


def test_negative_deployment_timeout() -> None:
    data = minimal()
    deployment(data)["timeout_s"] = -1
    assert_one_problem_naming(problems_of(data), "models.deployments[0].timeout_s")


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [("server", "env", "staging"), ("cache", "backend", "memcached"), ("server", "log_level", "loud")],
)
def test_bad_enum(section: str, key: str, value: str) -> None:
    data = minimal()
    data[section] = {key: value}
    line = assert_one_problem_naming(problems_of(data), f"{section}.{key}")
    assert value in line


def test_deployment_missing_required_key() -> None:
    data = minimal()
    del deployment(data)["litellm_model"]
    line = assert_one_problem_naming(problems_of(data), "models.deployments[0].litellm_model")
    assert "missing" in line


def test_fallback_naming_a_missing_deployment() -> None:
    data = minimal()
    deployment(data)["fallbacks"] = ["gamma"]
    line = assert_one_problem_naming(problems_of(data), "models.deployments[0].fallbacks")
    assert "gamma" in line


def test_fallback_to_itself() -> None:
    data = minimal()
    deployment(data)["fallbacks"] = ["alpha"]
    assert_one_problem_naming(problems_of(data), "models.deployments[0].fallbacks")


def test_shared_names_form_a_group_with_default_ids() -> None:
    data = minimal()
    deployment(data, 1)["name"] = "alpha"
    settings = settings_from_dict(data, {})
    assert [d.id for d in settings.group("alpha")] == ["alpha-1", "alpha-2"]


def test_duplicate_deployment_ids() -> None:
    data = minimal()
    deployment(data, 0)["id"] = "same"
    deployment(data, 1)["id"] = "same"
    line = assert_one_problem_naming(problems_of(data), "models.deployments[1].id")
    assert "same" in line
    assert "duplicate" in line


def test_routing_must_be_a_known_strategy() -> None:
    data = minimal()
    data["models"]["routing"] = "round-robin"
    assert_one_problem_naming(problems_of(data), "models.routing")


def test_litellm_model_without_provider_prefix() -> None:
    data = minimal()
    deployment(data)["litellm_model"] = "gpt-4o-mini"
    assert_one_problem_naming(problems_of(data), "models.deployments[0].litellm_model")


def test_redis_backend_without_redis_url() -> None:
    data = minimal()
    data["cache"] = {"backend": "redis"}
    assert_one_problem_naming(problems_of(data), "cache.redis_url")


def test_redis_url_with_wrong_scheme() -> None:
    data = minimal()
    data["cache"] = {"backend": "redis", "redis_url": "http://127.0.0.1:6379"}
    assert_one_problem_naming(problems_of(data), "cache.redis_url")


def test_api_key_env_naming_an_unset_variable() -> None:
    data = minimal()
    deployment(data, 1)["api_key_env"] = "BETA_PROVIDER_KEY"
    line = assert_one_problem_naming(problems_of(data, environ={"OTHER": "x"}), "models.deployments[1].api_key_env")
    assert "BETA_PROVIDER_KEY" in line


def test_server_api_keys_env_naming_an_unset_variable() -> None:
    data = minimal()
    data["server"] = {"api_keys_env": "GATEWAY_KEYS"}
    line = assert_one_problem_naming(problems_of(data), "server.api_keys_env")
    assert "GATEWAY_KEYS" in line
    assert settings_from_dict(minimal() | {"server": {"api_keys_env": "GATEWAY_KEYS"}}, environ={"GATEWAY_KEYS": "k1"})


def test_heartbeat_not_shorter_than_idle_timeout() -> None:
    data = minimal()
    data["streaming"] = {"heartbeat_s": 10, "idle_timeout_s": 10}
    assert_one_problem_naming(problems_of(data), "streaming.heartbeat_s")


@pytest.mark.parametrize("models", [{"deployments": []}, {}, None])
def test_no_deployments(models: dict[str, Any] | None) -> None:
    data = minimal()
    if models is None:
        del data["models"]
    else:
        data["models"] = models
    assert_one_problem_naming(problems_of(data), "models.deployments")


def test_empty_config_is_reported_not_crashing() -> None:
    assert_one_problem_naming(problems_of({}), "models.deployments")


# ---- several problems at once ----------------------------------------------------------------


def test_several_field_problems_are_all_reported() -> None:
    data = minimal()
    data["bogus"] = {}
    data["server"] = {"port": "x", "env": "staging", "nope": 1}
    data["streaming"] = {"heartbeat_s": 0}
    data["cache"] = {"backend": "memcached"}
    deployment(data)["timeout_s"] = -1
    deployment(data, 1)["extra"] = True
    problems = problems_of(data)
    keys = [line.split(":", 1)[0] for line in problems]
    assert sorted(keys) == sorted(
        [
            "bogus",
            "server.port",
            "server.env",
            "server.nope",
            "streaming.heartbeat_s",
            "cache.backend",
            "models.deployments[0].timeout_s",
            "models.deployments[1].extra",
        ]
    )


def test_several_cross_check_problems_are_all_reported() -> None:
    data = minimal()
    deployment(data)["fallbacks"] = ["gamma"]
    deployment(data)["id"] = "same"
    deployment(data, 1)["id"] = "same"
    deployment(data, 1)["api_key_env"] = "UNSET_KEY"
    data["cache"] = {"backend": "redis"}
    problems = problems_of(data)
    keys = sorted(line.split(":", 1)[0] for line in problems)
    assert keys == sorted(
        [
            "models.deployments[0].fallbacks",
            "models.deployments[1].id",
            "models.deployments[1].api_key_env",
            "cache.redis_url",
        ]
    )


def test_field_and_cross_check_problems_are_reported_together() -> None:
    data = minimal()
    data["server"] = {"port": "x"}
    deployment(data)["fallbacks"] = ["gamma"]
    deployment(data, 1)["api_key_env"] = "UNSET_KEY"
    keys = sorted(line.split(":", 1)[0] for line in problems_of(data))
    assert keys == sorted(["server.port", "models.deployments[0].fallbacks", "models.deployments[1].api_key_env"])


# ---- environment overrides ---------------------------------------------------------------------


def test_env_override_port_becomes_int() -> None:
    settings = settings_from_dict(minimal(), environ={"CHAT_SERVER__PORT": "9000"})
    assert settings.server.port == 9000
    assert type(settings.server.port) is int


def test_env_override_redis_backend_and_url() -> None:
    environ = {"CHAT_CACHE__BACKEND": "redis", "CHAT_CACHE__REDIS_URL": "redis://127.0.0.1:6379/0"}
    settings = settings_from_dict(minimal(), environ=environ)
    assert settings.cache.backend == "redis"
    assert settings.cache.redis_url == "redis://127.0.0.1:6379/0"


def test_env_override_redis_backend_alone_is_reported() -> None:
    assert_one_problem_naming(problems_of(minimal(), environ={"CHAT_CACHE__BACKEND": "redis"}), "cache.redis_url")


def test_env_override_wins_over_the_file() -> None:
    data = minimal()
    data["server"] = {"port": 1234, "env": "development"}
    settings = settings_from_dict(data, environ={"CHAT_SERVER__PORT": "9000", "CHAT_SERVER__ENV": "production"})
    assert settings.server.port == 9000
    assert settings.production


def test_env_override_bool_and_string_values() -> None:
    environ = {"CHAT_CACHE__ENABLED": "true", "CHAT_SERVER__HOST": "0.0.0.0"}
    settings = settings_from_dict(minimal(), environ=environ)
    assert settings.cache.enabled is True
    assert settings.server.host == "0.0.0.0"


def test_env_override_unknown_key_is_reported() -> None:
    # The variable is what the user has to fix, so the line starts with it (and still names the key).
    line = assert_one_problem_naming(problems_of(minimal(), environ={"CHAT_SERVER__PROT": "1"}), "CHAT_SERVER__PROT")
    assert line == "CHAT_SERVER__PROT: unknown key server.prot"


def test_env_override_unknown_section_is_reported() -> None:
    problems = problems_of(minimal(), environ={"CHAT_NOSECTION__KEY": "1"})
    line = assert_one_problem_naming(problems, "CHAT_NOSECTION__KEY")
    assert line == "CHAT_NOSECTION__KEY: unknown section nosection"


def test_env_override_wrong_type_is_reported() -> None:
    line = assert_one_problem_naming(problems_of(minimal(), environ={"CHAT_SERVER__PORT": "abc"}), "CHAT_SERVER__PORT")
    assert "server.port" in line


def test_env_override_cross_check_problem_names_the_variable() -> None:
    line = assert_one_problem_naming(
        problems_of(minimal(), environ={"CHAT_STREAMING__HEARTBEAT_S": "100"}), "streaming.heartbeat_s"
    )
    assert line.endswith("(set by CHAT_STREAMING__HEARTBEAT_S)")


def test_file_problems_do_not_mention_variables() -> None:
    data = minimal()
    data["server"] = {"prot": 1}
    assert problems_of(data, environ={"CHAT_SERVER__PORT": "9000"}) == ["server.prot: unknown key"]


def test_env_override_with_too_many_parts_is_reported() -> None:
    problems = problems_of(minimal(), environ={"CHAT_SERVER__PORT__X": "1"})
    assert len(problems) == 1
    assert problems[0].startswith("CHAT_SERVER__PORT__X:")


def test_unrelated_env_vars_are_ignored() -> None:
    environ = {"CHAT_CONFIG": "/nowhere.toml", "CHATTY__X": "1", "PATH": "/usr/bin", "HOME": "/root"}
    settings = settings_from_dict(minimal(), environ=environ)
    assert settings.server.port == 8000


# ---- the shipped file and load_settings ------------------------------------------------------


def test_shipped_default_config_loads() -> None:
    settings = load_settings(DEFAULT_CONFIG_PATH, environ={})
    assert [d.name for d in settings.models.deployments] == ["demo"]
    assert settings.server.env == "development"


def test_shipped_default_config_has_exactly_the_contract_sections() -> None:
    data = tomllib.loads(DEFAULT_CONFIG_PATH.read_text(encoding="utf-8"))
    assert set(data) == set(CONTRACT_SECTIONS)
    for section, keys in CONTRACT_SECTIONS.items():
        missing = keys - set(data[section])
        assert not missing, f"config/default.toml [{section}] lacks {sorted(missing)}"
    for dep in data["models"]["deployments"]:
        assert CONTRACT_DEPLOYMENT_KEYS <= set(dep)


def test_load_settings_default_path_comes_from_chat_config(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('[server]\nport = 8123\n\n[[models.deployments]]\nname = "m"\nlitellm_model = "openai/m"\n')
    settings = load_settings(environ={"CHAT_CONFIG": str(path)})
    assert settings.server.port == 8123
    assert [d.name for d in settings.models.deployments] == ["m"]


def test_load_settings_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path / "absent.toml", environ={})
    assert len(info.value.problems) == 1
    assert "absent.toml" in info.value.problems[0]


def test_load_settings_not_toml(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[server\nport = = 1\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert len(info.value.problems) == 1
    assert "TOML" in info.value.problems[0]


# ---- python -m app -----------------------------------------------------------------------------


def run_app(config: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    env["CHAT_CONFIG"] = str(config)
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    env["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run(
        [sys.executable, "-m", "app"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=False,
    )


def test_python_m_app_invalid_config_exits_2_with_one_line_per_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        "[server]\n"
        'port = "x"\n'
        'env = "staging"\n'
        "\n"
        "[cache]\n"
        'backend = "memcached"\n'
        "\n"
        "[[models.deployments]]\n"
        'name = "m"\n'
        'litellm_model = "openai/m"\n'
        "timeout_s = -1\n"
    )
    result = run_app(path)
    assert result.returncode == 2, result.stderr
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    expected = ["server.port", "server.env", "cache.backend", "models.deployments[0].timeout_s"]
    assert len(lines) == len(expected), lines
    for key in expected:
        assert sum(key + ":" in line for line in lines) == 1, (key, lines)


def test_python_m_app_missing_config_exits_2(tmp_path: Path) -> None:
    result = run_app(tmp_path / "does-not-exist.toml")
    assert result.returncode == 2, result.stderr
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "does-not-exist.toml" in lines[0]


def test_python_m_app_not_toml_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "notes.toml"
    path.write_text("this is not toml at all = = =\n{]\n")
    result = run_app(path)
    assert result.returncode == 2, result.stderr
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "notes.toml" in lines[0]
