"""app/domain/ids.py: ids from the OS's random bytes, a block at a time, never handed out twice."""

from __future__ import annotations

import os

from app.domain.ids import RandomBytes, random_hex


def test_ids_have_the_asked_length_in_hex_and_do_not_repeat_across_blocks() -> None:
    source = RandomBytes(block=64)  # a few ids a block: the refill is crossed many times
    ids = [source.hex(16) for _ in range(1000)]
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert len(set(ids)) == len(ids)
    assert {len(source.hex(n)) for n in (1, 8, 12, 63, 64, 65, 200)} == {2, 16, 24, 126, 128, 130, 400}


def test_a_block_is_handed_out_in_order_without_overlap() -> None:
    source = RandomBytes(block=32)
    first, second = source.hex(16), source.hex(16)
    block = bytes.fromhex(first + second)
    assert len(block) == 32 and first != second
    third = source.hex(16)  # a new block
    assert bytes.fromhex(third) not in block


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    random_hex(16)  # the parent's block is read, with ids left in it
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first id, then out without running any of the parent's cleanup
        try:
            os.write(write, random_hex(16).encode())
        finally:
            os._exit(0)
    os.close(write)
    try:
        child_id = os.read(read, 64).decode()
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    parent_id = random_hex(16)
    assert len(child_id) == 32
    assert child_id != parent_id  # without the fork hook both would take the same next 16 bytes
