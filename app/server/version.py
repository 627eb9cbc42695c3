"""The gateway's version: one number, from pyproject.toml, for --version, the banner and OpenAPI."""

from __future__ import annotations

import tomllib
from functools import cache
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "chat-gateway"
_PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


@cache
def version() -> str:
    # A checkout is usually run without being installed (the README's `pip install -r requirements.lock`),
    # so its pyproject.toml is the truth; an installed copy has no pyproject beside it and uses its metadata.
    try:
        project = tomllib.loads(_PYPROJECT.read_text(encoding="utf-8")).get("project", {})
        if project.get("name") == DISTRIBUTION and isinstance(project.get("version"), str):
            return str(project["version"])
    except (OSError, tomllib.TOMLDecodeError):
        pass
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"
