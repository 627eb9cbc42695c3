"""``python -m app``: validate the configuration, then serve the app factory with uvicorn."""

from __future__ import annotations

import sys

from app.serve import serve
from app.settings import ConfigError, load_settings
from app.worker_metrics import worker_metrics_dir


def main() -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config error: {problem}", file=sys.stderr)
        return 2
    with worker_metrics_dir(settings.server.workers):  # several workers: one /metrics for all
        serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
