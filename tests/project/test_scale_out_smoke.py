"""CI smoke for ``loadtests/scale_out.py``: two real gateways and one Redis on loopback share the cache."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = 8


@pytest.mark.timeout(200)
def test_two_replicas_share_the_cache() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "loadtests.scale_out", "--prompts", str(PROMPTS), "--max-seconds", "90"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    cache = result["cache"]
    assert result["ok"] is True
    assert len({r["pid"] for r in result["replicas"]}) == 2
    assert all(r["url"].startswith("http://127.0.0.1:") for r in result["replicas"])
    # Every prompt: a miss on the replica asked first, a hit on the other, one upstream call in all,
    # plus one for each ask of the other replica that came before the first one's write reached Redis
    # (the answer goes out before its cache write lands; on a loaded machine an ask can beat it).
    assert cache["first_asks_missed"] == cache["other_replica_hits"] == PROMPTS
    assert cache["upstream_calls"] == PROMPTS + cache["asked_before_the_write_landed"]
    assert cache["replayed_content_differs"] == 0
