"""Where a value sits in a decoded JSON document, named as the gateway's errors name fields."""

from __future__ import annotations

from typing import Any


def path_of(document: Any, value: str, path: str = "") -> str | None:
    """The first path (``messages[2].content[0].source.url``) at which ``value`` is a string in
    ``document``, depth first; None when it is nowhere. The document was decoded under the
    gateway's depth bound, so the recursion is bounded too."""
    if isinstance(document, str):
        return path if document == value else None
    if isinstance(document, dict):
        for key, item in document.items():
            found = path_of(item, value, f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
    elif isinstance(document, list):
        for i, item in enumerate(document):
            found = path_of(item, value, f"{path}[{i}]")
            if found is not None:
                return found
    return None
