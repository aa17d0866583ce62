"""Prometheus text exposition through ``prometheus-client``, for the programs' ``/metrics``.

Each program describes its numbers as :class:`Family` values when scraped (no global
registry, no background state); :func:`exposition` renders them with HELP and TYPE lines::

    exposition([Family("meshscale_control_nodes", "gauge", "Registered nodes.", [({}, 3)])])
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST


@dataclass(frozen=True, slots=True)
class Family:
    """One metric: ``kind`` is "gauge" or "counter" (a counter's name ends in ``_total``);
    ``samples`` are (labels, value) pairs, all with the same label names."""

    name: str
    kind: str
    help: str
    samples: Sequence[tuple[Mapping[str, str], float]] = field(default_factory=list)


class _Snapshot(Collector):
    def __init__(self, families: Iterable[Family]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        for f in self.families:
            labels = sorted(f.samples[0][0]) if f.samples else []
            m: GaugeMetricFamily | CounterMetricFamily
            if f.kind == "counter":
                m = CounterMetricFamily(f.name.removesuffix("_total"), f.help, labels=labels)
            elif f.kind == "gauge":
                m = GaugeMetricFamily(f.name, f.help, labels=labels)
            else:
                raise ValueError(f"metric {f.name}: unknown kind {f.kind!r}")
            for lab, value in f.samples:
                m.add_metric([lab[k] for k in labels], float(value))
            yield m


def exposition(families: Iterable[Family]) -> bytes:
    """The Prometheus text format (version 0.0.4) of ``families``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(families))
    return generate_latest(registry)
