"""Several workers' Prometheus expositions merged into one, as if one process had counted it all.

Every sample with the same name and labels is summed across workers: counters and histograms
(buckets, ``_sum``, ``_count``) because a server's total is the sum of its workers', and gauges
because every gauge the gateway exports is a count or a size (streams open, sockets open, resident
memory, open descriptors) whose server-wide value is the sum too. Families and series keep the
order in which they were first seen, so the output reads like one worker's.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

SampleKey = tuple[str, tuple[tuple[str, str], ...]]


class _Merged:
    """A collector that hands prometheus_client's renderer the merged families."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def merge_expositions(texts: Iterable[str]) -> bytes:
    order: list[str] = []
    headers: dict[str, tuple[str, str, str]] = {}
    values: dict[str, dict[SampleKey, float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name not in headers:
                order.append(family.name)
                headers[family.name] = (family.documentation, family.type, family.unit)
                values[family.name] = {}
            series = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sample.labels.items()))
                series[key] = series.get(key, 0.0) + sample.value
    merged = []
    for name in order:
        documentation, kind, unit = headers[name]
        metric = Metric(name, documentation, kind, unit)
        for (sample_name, labels), value in values[name].items():
            metric.add_sample(sample_name, dict(labels), value)
        merged.append(metric)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(merged))  # type: ignore[arg-type]
    return generate_latest(registry)
