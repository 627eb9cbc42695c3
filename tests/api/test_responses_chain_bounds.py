"""A ``previous_response_id`` chain is rebuilt only up to a bound on its size: past it the call is the
client's 400 ``context_length_exceeded``, read no further from the store (a chain grows a record per
call, failed calls included, so a key holder could otherwise make one request load gigabytes)."""

from __future__ import annotations

from typing import Any

import pytest

from app.access.keys import Caller
from app.api.responses.service import ResponsesService
from app.api.responses.store import MemoryResponseStore, StoredResponse
from app.config.settings import settings_from_dict
from app.domain.errors import ContextLengthExceeded
from tests.conftest import settings_dict

OWNER = "key:a"


class CountingStore(MemoryResponseStore):
    def __init__(self) -> None:
        super().__init__(64 * 1024 * 1024)
        self.read = 0

    async def get_many(self, response_ids: list[str]) -> list[StoredResponse | None]:
        self.read += len(response_ids)
        return await super().get_many(response_ids)


async def chain(store: MemoryResponseStore, length: int, text: str) -> str:
    """``length`` records each following the one before; returns the last one's id."""
    previous: str | None = None
    for i in range(length):
        record = StoredResponse(
            id=f"resp_{i}",
            owner=OWNER,
            response={
                "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}]
            },
            input=[{"type": "message", "role": "user", "content": text}],
            previous_response_id=previous,
        )
        await store.put(record, 60)
        previous = record.id
    assert previous is not None
    return previous


def service(store: MemoryResponseStore, cap: int) -> ResponsesService:
    settings = settings_from_dict(settings_dict("http://127.0.0.1:9"), {})
    chat: Any = None  # rebuilding a conversation asks nothing of the chat service
    return ResponsesService(settings, chat, store, None, max_conversation_bytes=cap)


def caller() -> Caller:
    return Caller(scope=OWNER)


async def test_a_chain_under_the_bound_is_rebuilt_whole() -> None:
    store = CountingStore()
    last = await chain(store, 50, "x" * 100)
    items, ids = await service(store, 1024 * 1024).conversation(last, caller())
    assert len(items) == 100 and len(ids) == 50
    assert items[0]["content"] == "x" * 100


async def test_a_chain_over_the_bound_is_refused_without_reading_the_rest() -> None:
    store = CountingStore()
    last = await chain(store, 500, "x" * 1000)  # ~2 KB a record, ~1 MB in all
    with pytest.raises(ContextLengthExceeded) as refused:
        await service(store, 64 * 1024).conversation(last, caller())
    assert refused.value.param == "previous_response_id" and refused.value.status == 400
    assert store.read < 200, f"read {store.read} of 500 records for a 64 KB bound"
