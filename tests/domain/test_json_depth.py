"""The nesting check that runs before a client's JSON is decoded: exact for JSON, brackets inside
strings and escapes not counted (what it costs: ``python -m loadtests.bench_micro``)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain.chat_request import MAX_JSON_DEPTH, _deeper_than, check_depth
from app.domain.errors import InvalidRequest

# Strings full of what the check must not take for structure: brackets, quotes, backslashes.
_tricky = st.text(alphabet=st.sampled_from(list('[]{}"\\\\ab/\n\u00e9')), max_size=12)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | _tricky,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_tricky, inner, max_size=3),
    max_leaves=40,
)


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


def _nest(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k[": value}
    return value


@settings(max_examples=300, deadline=None)
@given(_json, st.integers(min_value=0, max_value=8))
def test_it_agrees_with_the_depth_of_the_decoded_document(value: Any, limit: int) -> None:
    data = json.dumps(value, ensure_ascii=False).encode()
    assert _deeper_than(data, limit) == (_depth(value) > limit), data


@settings(max_examples=200, deadline=None)
@given(_json, st.integers(min_value=0, max_value=8), st.integers(min_value=0, max_value=4000))
def test_escapes_sparse_or_dense_are_read_alike(value: Any, limit: int, padding: int) -> None:
    """Padding dilutes the escapes until the check takes them out the other way (a real body's escapes
    are sparse; a small tricky document's are dense): the same answer either way."""
    data = json.dumps([value, "x" * padding], ensure_ascii=False).encode()
    assert _deeper_than(data, limit) == (_depth([value, ""]) > limit), data


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH - 1, MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1, 400])
def test_the_limit_is_exact(depth: int) -> None:
    data = json.dumps({"messages": [], "x": _nest(depth - 1)}).encode()  # the outer object is a level
    if depth > MAX_JSON_DEPTH:
        with pytest.raises(InvalidRequest) as refused:
            check_depth(data)
        assert refused.value.code == "too_deep"
    else:
        check_depth(data)


def test_brackets_in_strings_and_escaped_quotes_do_not_count() -> None:
    deep_text = "[{" * 500 + '\\"]' + "\\\\" * 3 + '"[['
    check_depth(json.dumps({"messages": [{"content": deep_text}], "tools": [[[]]] * 30}).encode())


def test_unpaired_brackets_are_left_to_the_decoder() -> None:
    assert not _deeper_than(b"]" * 100 + b"[" * 100, MAX_JSON_DEPTH)  # not JSON: the decoder says so
