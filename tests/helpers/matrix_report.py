"""What the matrix's report tests share: a ``Matrix`` whose temp dir goes with the test, and a
loadgen summary of the fields the report reads."""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from loadtests import run_matrix


@contextmanager
def report_matrix(args: argparse.Namespace) -> Iterator[run_matrix.Matrix]:
    m = run_matrix.Matrix(args)
    try:
        yield m
    finally:
        shutil.rmtree(m.tmp, ignore_errors=True)


def cell_summary(cpu_per_1k: float, *, errors: int = 0, ttfb_p50: float = 55.0) -> dict[str, Any]:
    """A cell's summary as loadgen writes it, 320 requests, with this CPU per 1000 chunks."""
    return {
        "requests": 320,
        "ok": 320,
        "errors": errors,
        "chunks_per_s": 2400.0,
        "server": {"cpu_s_per_1k_chunks": cpu_per_1k},
        "ttfb_ms": {"p50": ttfb_p50, "p95": 60.0, "p99": 61.0},
    }
