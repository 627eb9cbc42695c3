"""Model metadata that LiteLLM ships (its local cost map), for the catalogue, read without importing
LiteLLM.

Importing LiteLLM costs most of a worker's start-up time and memory; a gateway whose deployments all
take the relay never needs it. The map is LiteLLM's own backup file, found through the package's
import spec (which does not run the package) and read once; only the entries of configured
deployments are kept.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import msgspec

MAP_FILE = "model_prices_and_context_window_backup.json"


def shipped_map_path() -> Path | None:
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / MAP_FILE
    return path if path.is_file() else None


class ShippedMetadata:
    """The shipped entries for a set of LiteLLM model strings (``provider/model``)."""

    def __init__(self, litellm_models: Iterable[str], path: Path | None = None) -> None:
        wanted: set[str] = set()
        for name in litellm_models:
            wanted.add(name)
            wanted.add(name.partition("/")[2])
        path = path if path is not None else shipped_map_path()
        self._entries: dict[str, Mapping[str, Any]] = {}
        if path is not None:
            whole = msgspec.json.decode(path.read_bytes())
            if isinstance(whole, dict):
                self._entries = {k: v for k, v in whole.items() if k in wanted and isinstance(v, dict)}

    def metadata(self, litellm_model: str) -> Mapping[str, Any] | None:
        entry = self._entries.get(litellm_model)
        if entry is not None:
            return entry
        provider, sep, model = litellm_model.partition("/")
        if not sep:
            return None
        entry = self._entries.get(model)
        if entry is not None and entry.get("litellm_provider") == provider:
            return entry
        return None

    def provider_of(self, litellm_model: str) -> str | None:
        prefix, sep, _ = litellm_model.partition("/")
        if sep:
            return prefix
        entry = self._entries.get(litellm_model)
        provider = entry.get("litellm_provider") if entry is not None else None
        return provider if isinstance(provider, str) else None
