"""Histograms aggregated in place and rendered at scrape time, beside the OpenTelemetry instruments.

A record through the OpenTelemetry SDK validates and hashes its attribute set and walks the view
machinery, four times per request (request duration, time to first byte and token, stream
duration); at high concurrency that work is latency for the streams queued behind it. Here a record
is a dict lookup, a bisect and two additions;
the exported series are the ones the SDK's Prometheus reader wrote: same names, help texts, label
sets, buckets (upper bounds inclusive, as OpenTelemetry's explicit buckets), ``_count`` and ``_sum``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Mapping

from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

# A series: one count per bucket (the last for +Inf), then the sum of the observed values.
_Series = list[float]


class Histogram:
    """One histogram family; ``record`` runs on the event loop, ``family`` may run in another thread."""

    __slots__ = ("_bounds", "_series", "buckets", "documentation", "name")

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self.name = name  # the exported name, unit suffix included (e.g. ``chat_stream_duration_seconds``)
        self.documentation = documentation
        self.buckets = buckets
        self._bounds = [floatToGoString(b) for b in buckets] + ["+Inf"]
        self._series: dict[tuple[tuple[str, str], ...], _Series] = {}

    def record(self, value: float, attributes: Mapping[str, str]) -> None:
        key = tuple(attributes.items())
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = [0.0] * (len(self.buckets) + 2)
        series[bisect_left(self.buckets, value)] += 1
        series[-1] += value

    def family(self) -> Metric | None:
        """The family as the Prometheus renderer takes it; None before the first record."""
        # Copies (each atomic under the GIL): a scrape in another thread must not see a series change
        # halfway or the dict change size. One label set recorded in two key orders is one series.
        merged: dict[tuple[tuple[str, str], ...], _Series] = {}
        for key, series in list(self._series.items()):
            values = list(series)
            ordered = tuple(sorted(key))
            if ordered in merged:
                merged[ordered] = [a + b for a, b in zip(merged[ordered], values, strict=True)]
            else:
                merged[ordered] = values
        if not merged:
            return None
        family = Metric(self.name, self.documentation, "histogram")
        bucket, count, total = f"{self.name}_bucket", f"{self.name}_count", f"{self.name}_sum"
        for key, values in merged.items():
            labels = dict(key)
            running = 0.0
            for bound, n in zip(self._bounds, values, strict=False):  # the last value is the sum
                running += n
                family.add_sample(bucket, {**labels, "le": bound}, running)
            family.add_sample(count, labels, running)
            family.add_sample(total, labels, values[-1])
        return family


class Histograms:
    """The collector that hands the histograms to the registry's renderer."""

    def __init__(self, *histograms: Histogram) -> None:
        self._histograms = histograms

    def collect(self) -> Iterator[Metric]:
        for histogram in self._histograms:
            family = histogram.family()
            if family is not None:
                yield family
