"""``python -m app`` (or ``chat-gateway``): check the configuration, then serve it with uvicorn.

Every configuration problem, including one only LiteLLM can see (a provider prefix it does not
know), is one ``config error: <key>: <why>`` line on stderr and exit status 2. The server's banner
goes to stderr too; stdout carries only what was asked for (``--version``, ``--check``'s verdict).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from app.config.settings import ConfigError, Settings, config_path, config_source, load_settings
from app.server.version import version

CONFIG_ERROR = 2
LISTEN_ERROR = 1
STARTUP_FAILED = 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app",
        description="Chat Gateway: OpenAI-compatible chat completions over JSON, SSE and WebSocket, "
        "in front of LiteLLM.",
        epilog="The configuration is one TOML file: config/default.toml, or the file named by --config or "
        "CHAT_CONFIG (it replaces the default, it is not merged with it). Any single key can be overridden "
        "with CHAT_<SECTION>__<KEY>, e.g. CHAT_SERVER__PORT=9000. Reference: docs/configuration.md.",
    )
    parser.add_argument("--version", action="version", version=f"chat-gateway {version()}")
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="the TOML configuration file to use (the same as setting CHAT_CONFIG=PATH)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate the configuration, including each deployment's provider prefix, and exit: "
        "0 when it is valid, 2 with one 'config error: <key>: <why>' line per problem; no server is started",
    )
    return parser


def report(problems: Sequence[str]) -> int:
    for problem in problems:
        print(f"config error: {problem}", file=sys.stderr)
    return CONFIG_ERROR


CHECKING = "checking providers (LiteLLM's import takes a few seconds)..."


def every_problem(error: ConfigError) -> list[str]:
    """The configuration's problems and, on what could still be read of it, the provider names'."""
    from app.server.preflight import needs_litellm, prefix_problems

    if error.settings is None:
        return error.problems
    if needs_litellm(error.settings):
        print(CHECKING, file=sys.stderr, flush=True)
    return error.problems + prefix_problems(error.settings)


def check(settings: Settings, file: Path) -> int:
    from app.server.preflight import needs_litellm, provider_problems

    if needs_litellm(settings):
        print(CHECKING, file=sys.stderr, flush=True)
    problems = provider_problems(settings, os.environ)
    if problems:
        return report(problems)
    names = sorted({d.name for d in settings.models.deployments})
    print(f"config ok: {file} ({len(names)} model{'s' * (len(names) != 1)}: {', '.join(names)})")
    return 0


def serve(settings: Settings, file: Path, source: str, started: float) -> int:
    from app.observability.worker_metrics import worker_metrics_dir
    from app.server import banner, launch
    from app.server.serve import gateway_config

    server = settings.server
    for line in banner.opening_lines(settings, file, version(), source=source, environ=os.environ):
        print(line, file=sys.stderr, flush=True)
    try:
        sock = launch.bind(server.host, server.port)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        print(f"error: cannot listen on {banner.listen_address(settings)}: {reason}", file=sys.stderr)
        return LISTEN_ERROR
    from app.server.preflight import needs_litellm, provider_problems

    print(banner.loading_line(needs_litellm(settings)), file=sys.stderr, flush=True)
    problems = provider_problems(settings, os.environ)  # the slow import of LiteLLM happens here
    if problems:
        sock.close()
        return report(problems)
    launch.watch_ready(
        sock,
        lambda: banner.write_line(banner.ready_line(settings, time.perf_counter() - started), sys.stderr),
    )
    config = gateway_config(
        settings,
        "app.server.startup_guard:app_factory",
        factory=True,
        host=server.host,
        port=server.port,
        workers=server.workers,
        loop="auto",
        log_level="warning",
    )
    if server.workers > 1:
        from app.observability.log import configure_supervisor_logging

        configure_supervisor_logging(server.log_level)
    with worker_metrics_dir(server.workers):  # several workers: one /metrics for all
        return 0 if launch.serve(config, sock) else STARTUP_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    started = time.perf_counter()
    args = build_parser().parse_args(argv)
    if args.config:
        # Through the environment rather than an argument: uvicorn's worker processes and the app
        # factory load the settings again, and they read CHAT_CONFIG.
        os.environ["CHAT_CONFIG"] = args.config
    source = "--config" if args.config else config_source(os.environ)
    file = config_path(os.environ).resolve()
    try:
        settings = load_settings(environ=os.environ, source=source if source != "default" else None)
    except ConfigError as exc:
        return report(every_problem(exc))
    if args.check:
        return check(settings, file)
    return serve(settings, file, source, started)


if __name__ == "__main__":
    sys.exit(main())
