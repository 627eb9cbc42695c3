"""docs/ is kept in step with the code: every configuration key and every metric, both ways.

The keys are read from app/config/schema.py's msgspec Structs and the metrics from a live /metrics, so a
key or metric added later fails here until it is documented (and a documented one that is removed
fails too). Defaults and label names are compared, not just names. Links between the docs, and from
the README, must resolve inside the repository.
"""

from __future__ import annotations

import asyncio
import json
import re
import tomllib
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import websockets

from app.config.settings import Settings, settings_from_dict
from tests.conftest import ServerThread, settings_dict
from tests.helpers.fake_provider import Behaviour, FakeProvider

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCS = REPO_ROOT / "docs"
REQUIRED, UNSET = "*required*", "*unset*"
#: A table row whose first cell is a backticked name: `| `name` | cell | ...`.
ROW = re.compile(r"^\| `(?P<name>[^`]+)` \| (?P<second>[^|]*?) \|(?P<rest>.*)$")


def doc_rows(page: str) -> dict[str, tuple[str, str]]:
    rows: dict[str, tuple[str, str]] = {}
    for line in (DOCS / page).read_text(encoding="utf-8").splitlines():
        match = ROW.match(line)
        if match:
            rows[match["name"]] = (match["second"].strip(), match["rest"])
    return rows


# ---- configuration -----------------------------------------------------------------------------


def _struct(tp: Any) -> type[msgspec.Struct] | None:
    return tp if isinstance(tp, type) and issubclass(tp, msgspec.Struct) else None


def _default(field: msgspec.structs.FieldInfo) -> Any:
    if field.default is not msgspec.NODEFAULT:
        return field.default
    if field.default_factory is not msgspec.NODEFAULT:
        return field.default_factory()
    return REQUIRED


def config_keys(cls: type[msgspec.Struct] = Settings, prefix: str = "") -> dict[str, Any]:
    """Every dotted key the configuration accepts, with its default (sections themselves are not keys)."""
    keys: dict[str, Any] = {}
    for field in msgspec.structs.fields(cls):
        name = f"{prefix}{field.encode_name}"
        nested = _struct(field.type)
        if nested is not None and not prefix:
            keys |= config_keys(nested, f"{name}.")
            continue
        keys[name] = _default(field)
        if nested is not None:
            keys |= config_keys(nested, f"{name}.")
        elif typing.get_origin(field.type) is list and (item := _struct(typing.get_args(field.type)[0])):
            keys |= config_keys(item, f"{name}[].")
    return keys


def _plain(value: Any) -> Any:
    """A default as TOML would write it: structs as tables, unset (None) members left out."""
    if isinstance(value, msgspec.Struct):
        return {k: _plain(v) for k, v in msgspec.structs.asdict(value).items() if v is not None}
    return value


def test_config_keys_are_the_documented_ones() -> None:
    code = config_keys()
    documented = doc_rows("configuration.md")
    assert "server.port" in code and "models.deployments[].info.mode" in code  # the walk reaches every level
    assert sorted(set(code) - set(documented)) == [], "keys missing from docs/configuration.md"
    assert sorted(set(documented) - set(code)) == [], "keys documented that the code does not have"


def test_config_defaults_are_the_documented_ones() -> None:
    documented = doc_rows("configuration.md")
    for key, default in config_keys().items():
        cell = documented[key][0]
        if default == REQUIRED or default is None:
            assert cell == (REQUIRED if default == REQUIRED else UNSET), f"{key}: documented as {cell}"
            continue
        assert cell.startswith("`") and cell.endswith("`"), f"{key}: default cell {cell!r} is not a TOML value"
        written = tomllib.loads(f"v = {cell.strip('`')}")["v"]
        assert written == _plain(default), f"{key}: docs say {written!r}, the code {_plain(default)!r}"


def test_shipped_config_agrees_with_the_code_defaults() -> None:
    # config/default.toml is the documented "every key, with a comment" file: its section values are the defaults.
    shipped = tomllib.loads((REPO_ROOT / "config" / "default.toml").read_text(encoding="utf-8"))
    defaults = config_keys()
    for section, values in shipped.items():
        for key, value in values.items():
            if key != "deployments":
                assert value == _plain(defaults[f"{section}.{key}"]), f"{section}.{key}"


# ---- metrics -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exposition(fake_provider: FakeProvider) -> Iterator[str]:
    """/metrics of a real gateway after one request of every kind, so every family has a sample."""
    # A priced model (spend) and a request limit the traffic below runs into (rate-limited counts).
    data = settings_dict(fake_provider.base_url, rate_limit={"requests_per_minute": 5})
    for dep in data["models"]["deployments"]:
        if dep["name"] == "normal":
            dep["info"] = {"input_cost_per_mtok": 1.0, "output_cost_per_mtok": 2.0}
    # A provider that never reports usage: its call is charged from an estimate (usage-estimated counts).
    fake_provider.set_behaviour("no_usage", Behaviour(no_usage=True))
    data["models"]["deployments"].append(
        {"name": "no_usage", "litellm_model": "openai/no_usage", "api_base": fake_provider.base_url}
    )
    server = ServerThread(settings_from_dict(data, environ={})).start()
    try:
        url = f"{server.base_url}/v1/chat/completions"
        body = {"model": "normal", "messages": [{"role": "user", "content": "hi"}]}
        assert httpx.post(url, json=body, timeout=10).status_code == 200
        assert httpx.post(url, json={**body, "stream": True}, timeout=10).status_code == 200
        assert httpx.post(url, json={**body, "model": "server_error"}, timeout=10).status_code >= 500
        assert httpx.post(url, json={**body, "model": "no_usage"}, timeout=10).status_code == 200

        async def over_a_socket() -> None:
            async with websockets.connect(server.ws_url, subprotocols=["chat.v1"], open_timeout=10) as ws:  # type: ignore[list-item]
                await ws.send(json.dumps({"type": "chat.completion.create", "id": "a", "request": body}))
                while json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "chat.completion.chunk":
                    pass

        asyncio.run(over_a_socket())
        # 5 a minute, counted per clock minute: 16 requests in all cannot fit in two minutes' 5 each,
        # so a 429 comes even when a minute turns over during the test (it did once in CI).
        statuses: list[int] = []
        while 429 not in statuses and len(statuses) < 12:
            statuses.append(httpx.post(url, json=body, timeout=10).status_code)
        assert 429 in statuses, statuses
        yield httpx.get(f"{server.base_url}/metrics", timeout=10).text
    finally:
        server.stop()


def exported(text: str) -> dict[str, set[str]]:
    """Family name (as exposed) -> label names, from the exposition's TYPE lines and samples."""
    families = {line.split()[2]: set[str]() for line in text.splitlines() if line.startswith("# TYPE ")}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        sample = line.split("{", 1)[0].split(" ", 1)[0]
        family = next((f for f in families if sample == f or sample in (f"{f}_bucket", f"{f}_count", f"{f}_sum")), None)
        if family is not None and "{" in line:
            families[family] |= set(re.findall(r'([a-z_]+)="', line.split("{", 1)[1])) - {"le"}
    return families


#: The modules that create instruments (each ``meter.create_*`` call is one exported family).
INSTRUMENT_MODULES = ("observability/metrics.py", "observability/process_metrics.py")


def test_every_instrument_is_exported(exposition: str) -> None:
    # Each meter.create_* call and each in-process Histogram(...) in app/observability/metrics.py is one family: one
    # that no request exercised fails here.
    source = "".join((REPO_ROOT / "app" / name).read_text(encoding="utf-8") for name in INSTRUMENT_MODULES)
    families = re.findall(r"\bmeter\.create_\w+\(", source) + re.findall(r"= Histogram\(", source)
    assert len(exported(exposition)) == len(families)


def test_metrics_are_the_documented_ones(exposition: str) -> None:
    code = exported(exposition)
    documented = {
        name: set(re.findall(r"`([a-z_]+)`", rest.split("|")[0]))
        for name, (kind, rest) in doc_rows("metrics.md").items()
        if kind in ("histogram", "counter", "gauge")  # the metrics table, not the log fields below it
    }
    assert sorted(set(code) - set(documented)) == [], "metrics missing from docs/metrics.md"
    assert sorted(set(documented) - set(code)) == [], "metrics documented that /metrics does not export"
    for name, labels in code.items():
        assert documented[name] == labels, (
            f"{name}: docs list {sorted(documented[name])}, /metrics has {sorted(labels)}"
        )


# ---- links -------------------------------------------------------------------------------------

LINK = re.compile(r"\]\((?!https?://)([^)#\s]*)(?:#([^)\s]+))?\)")


def anchors(page: Path) -> set[str]:
    headings = [
        line.lstrip("#").strip() for line in page.read_text(encoding="utf-8").splitlines() if line.startswith("#")
    ]
    return {re.sub(r"[^a-z0-9 _-]", "", h.lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", [REPO_ROOT / "README.md", *sorted(DOCS.glob("*.md"))], ids=lambda p: p.name)
def test_links_resolve_inside_the_repository(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    assert "../shared" not in text
    for target, anchor in LINK.findall(text):
        resolved = (page.parent / target).resolve() if target else page
        assert resolved.is_relative_to(REPO_ROOT), f"{page.name} links outside the repository: {target}"
        assert resolved.exists(), f"{page.name}: {target} does not exist"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{page.name}: no heading #{anchor} in {resolved.name}"


def test_readme_points_at_the_docs() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    for page in sorted(DOCS.glob("*.md")):
        assert f"(docs/{page.name})" in readme or (page.name == "README.md" and "(docs/)" in readme), page.name


# ---- the README's configuration examples work as the README says -------------------------------


def readme_toml_blocks() -> list[dict[str, Any]]:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    return [tomllib.loads(block) for block in re.findall(r"```toml\n(.*?)```", readme, re.DOTALL)]


def test_readme_single_provider_example_needs_only_its_key() -> None:
    from app.config.settings import settings_from_dict
    from app.server.preflight import provider_problems

    single = readme_toml_blocks()[0]
    settings = settings_from_dict(single, environ={"OPENAI_API_KEY": "sk-test"})
    assert [d.name for d in settings.models.deployments] == ["gpt-4o-mini"]
    assert provider_problems(settings, {"OPENAI_API_KEY": "sk-test"}) == []


def test_readme_multi_provider_example_names_the_missing_key() -> None:
    from app.config.settings import ConfigError, settings_from_dict
    from app.server.preflight import provider_problems

    several = readme_toml_blocks()[1]
    with pytest.raises(ConfigError) as refused:
        settings_from_dict(several, environ={"OPENAI_API_KEY": "sk-test"})
    assert refused.value.problems == [
        "models.deployments[1].api_key_env: environment variable ANTHROPIC_API_KEY is not set"
    ]
    both = {"OPENAI_API_KEY": "sk-test", "ANTHROPIC_API_KEY": "sk-ant-test"}
    assert provider_problems(settings_from_dict(several, environ=both), both) == []
