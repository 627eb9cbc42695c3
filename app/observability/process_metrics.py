"""Process metrics (API.md 5), read when /metrics is scraped and never in between.

``process_resident_memory_bytes``, ``process_cpu_seconds_total`` and ``process_open_fds`` carry the
names Prometheus's own client libraries use, so existing dashboards and alerts work unchanged;
``python_gc_collections_total`` and ``python_gc_objects_collected_total`` (per generation) come from
``gc.get_stats()``, which is a read of counters the interpreter keeps anyway.

Each callback is one small read: ``/proc/self/statm`` for memory (one line), ``getrusage`` for CPU
(one syscall), a listing of ``/proc/self/fd`` for descriptors. Where ``/proc`` is missing (macOS
development machines) memory falls back to the peak RSS from ``getrusage`` and descriptors to
``/dev/fd``.
"""

from __future__ import annotations

import gc
import os
import resource
import sys
from collections.abc import Iterable

from opentelemetry.metrics import CallbackOptions, Meter, Observation

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_memory_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # ru_maxrss is in kilobytes on Linux and in bytes on macOS.
        return int(peak if sys.platform == "darwin" else peak * 1024)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def open_fds() -> int:
    for path in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(path))
        except OSError:
            continue
    return 0


def register_process_metrics(meter: Meter) -> None:
    """Observable instruments on ``meter``; their callbacks run only during a collection (a scrape)."""

    def memory(_options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(resident_memory_bytes())]

    def cpu(_options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(cpu_seconds())]

    def fds(_options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(open_fds())]

    def gc_collections(_options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(s["collections"], {"generation": str(g)}) for g, s in enumerate(gc.get_stats())]

    def gc_collected(_options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(s["collected"], {"generation": str(g)}) for g, s in enumerate(gc.get_stats())]

    meter.create_observable_gauge(
        "process.resident_memory", [memory], unit="By", description="Resident memory size in bytes"
    )
    meter.create_observable_counter("process.cpu", [cpu], unit="s", description="User and system CPU time spent")
    meter.create_observable_gauge("process.open_fds", [fds], description="Open file descriptors")
    meter.create_observable_counter(
        "python.gc.collections", [gc_collections], description="Garbage collector runs, by generation"
    )
    meter.create_observable_counter(
        "python.gc.objects_collected", [gc_collected], description="Objects the garbage collector freed, by generation"
    )
