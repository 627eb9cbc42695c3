"""The memory response store: responses kept for resuming only (``store: false``) have a budget of
their own, so a client streaming every turn unstored never evicts stored responses."""

from __future__ import annotations

from app.api.responses.store import MemoryResponseStore, StoredResponse


def record(response_id: str, size: int, *, stored: bool) -> StoredResponse:
    return StoredResponse(
        id=response_id,
        owner="key:a",
        response={"output": []},
        input=[{"type": "message", "role": "user", "content": "x" * size}],
        stored=stored,
        stream_id=None if stored else f"s_{response_id}",
    )


async def test_unstored_records_evict_only_their_own_kind() -> None:
    store = MemoryResponseStore(100_000)
    await store.put(record("kept", 10_000, stored=True), 60)
    for i in range(200):  # 2 MB of unstored turns through a 100 KB store
        await store.put(record(f"turn{i}", 10_000, stored=False), 60)
    assert (await store.get("kept")) is not None
    assert (await store.get("turn199")) is not None and (await store.get("turn0")) is None
    assert store.bytes <= 100_000 + 100_000 // 4


async def test_a_record_moves_between_kinds_and_is_deleted_from_either() -> None:
    store = MemoryResponseStore(100_000)
    await store.put(record("r", 100, stored=False), 60)
    await store.put(record("r", 100, stored=True), 60)  # the same id again, now stored
    assert len(store) == 1 and (await store.get("r")) is not None
    assert await store.delete("r") and not await store.delete("r")
    assert (store.bytes, len(store)) == (0, 0)
