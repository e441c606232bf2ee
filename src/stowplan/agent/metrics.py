"""Prometheus metrics with Triton's names where the meaning is the same, so Triton dashboards
and KEDA recipes work unchanged. Counters of durations are cumulative microseconds, as in Triton;
average batch size = nv_inference_count / nv_inference_exec_count.

Extra stowplan series: ``stowplan_batch_cap`` (the AIMD cap), ``stowplan_model_ready``,
``stowplan_request_latency_seconds`` (histogram, for p99 in PromQL), ``stowplan_batch_size``
(histogram of items per batch), ``stowplan_request_dropped`` (every load-shedding 503) and
``stowplan_model_prefetch_seconds`` (histogram of offloaded-model prefetches).

Load shedding and the executor's wait (issue 12 item 4):

* ``stowplan_requests_refused_total{reason}``: 503s from load shedding per reason
  (``queue_full``, ``deadline``, ``unloading``; ``admission``, with an empty ``model``: the
  front ends' in-flight bound, :mod:`stowplan.agent.admission`);
* ``stowplan_inflight_requests``, ``stowplan_inflight_body_bytes``: what the front ends hold
  against that bound now;
* ``stowplan_requests_refused_queue_empty_total``: refusals made while no other request was
  queued for the model, an alarm that must stay 0 (a lone client is never refused);
* ``stowplan_executor_wait_seconds`` (histogram): per batch, how long the time-sliced
  executor kept a ready batch waiting (for other models' slices);
  ``stowplan_executor_wait_bound_seconds``: the bound it keeps, one duty cycle (0: none);
  ``stowplan_executor_wait_over_bound_total``: batches that waited longer (a contended CPU
  can delay the executor's thread past it).
Callers: serving (per batch / request) and the server (``/metrics``). Each Agent owns its own
registry so tests and several agents never collide.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from stowplan.agent.telemetry import DeviceSample

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_M = ("model", "version")


LATENCY_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
WAIT_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


class _Buckets:
    """One histogram's counts per bucket (not cumulative; the last is +Inf) and its sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        out, seen = [], 0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            seen += n
            out.append(("+Inf" if bound == math.inf else repr(float(bound)), float(seen)))
        return out


class _HotSeries:
    """One model's series that every batch or request updates, as plain numbers under one
    lock: prometheus_client's objects take a lock and check their state on every update,
    about 1.5 µs each, a dozen times a request. :class:`_HotCollector` exports them as the
    same families, when scraped."""

    __slots__ = (
        "batch_size",
        "cap",
        "compute_us",
        "count",
        "created",
        "exec_count",
        "latency",
        "lock",
        "queue_us",
        "request_us",
        "success",
        "wait",
        "wait_bound",
        "wait_over",
    )

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.created = time.time()
        self.count = self.exec_count = self.queue_us = self.compute_us = 0.0
        self.success = self.request_us = self.wait_over = 0.0
        self.cap = self.wait_bound = 0.0
        self.batch_size = _Buckets(BATCH_SIZE_BUCKETS)
        self.latency = _Buckets(LATENCY_BUCKETS_S)
        self.wait = _Buckets(WAIT_BUCKETS_S)


#: (name, help, kind, attribute) of each family :class:`_HotCollector` exports
_HOT_FAMILIES = (
    ("nv_inference_request_success", "Successful requests", "counter", "success"),
    ("nv_inference_count", "Inferences performed (batch items)", "counter", "count"),
    ("nv_inference_exec_count", "Batches executed", "counter", "exec_count"),
    (
        "nv_inference_request_duration_us",
        "Cumulative end-to-end request time (us)",
        "counter",
        "request_us",
    ),
    (
        "nv_inference_queue_duration_us",
        "Cumulative time requests waited in the queue (us)",
        "counter",
        "queue_us",
    ),
    (
        "nv_inference_compute_infer_duration_us",
        "Cumulative compute time of requests (us)",
        "counter",
        "compute_us",
    ),
    ("stowplan_batch_cap", "Current batch-size cap (AIMD)", "gauge", "cap"),
    ("stowplan_request_latency_seconds", "End-to-end request latency", "histogram", "latency"),
    ("stowplan_batch_size", "Items per executed batch", "histogram", "batch_size"),
    (
        "stowplan_executor_wait_seconds",
        "Time a ready batch waited for the device (other models' slices)",
        "histogram",
        "wait",
    ),
    (
        "stowplan_executor_wait_bound_seconds",
        "Bound on the executor's added wait: one duty cycle (0: no duty cycle)",
        "gauge",
        "wait_bound",
    ),
    (
        "stowplan_executor_wait_over_bound",
        "Batches whose executor wait exceeded one duty cycle",
        "counter",
        "wait_over",
    ),
)


def _snapshot(value: Any) -> Any:
    """A number as it is; a histogram's (cumulative buckets, sum)."""
    return (value.cumulative(), value.total) if isinstance(value, _Buckets) else value


class _HotCollector(Collector):
    """Exports every model's :class:`_HotSeries` (read under its lock when scraped)."""

    def __init__(self, series: dict[str, _HotSeries]) -> None:
        self.series = series

    def collect(self) -> Iterator[Metric]:
        rows = []
        for model, hot in list(self.series.items()):
            with hot.lock:
                values = {attr: _snapshot(getattr(hot, attr)) for *_, attr in _HOT_FAMILIES}
            rows.append(([model, "1"], hot.created, values))
        for name, doc, kind, attr in _HOT_FAMILIES:
            family: Metric
            if kind == "counter":
                family = CounterMetricFamily(name, doc, labels=_M)
                for labels, created, values in rows:
                    family.add_metric(labels, values[attr], created=created)
            elif kind == "gauge":
                family = GaugeMetricFamily(name, doc, labels=_M)
                for labels, _, values in rows:
                    family.add_metric(labels, values[attr])
            else:
                family = HistogramMetricFamily(name, doc, labels=_M)
                for labels, created, values in rows:
                    buckets, total = values[attr]
                    family.add_metric(labels, buckets, total)
                    family.add_sample(
                        f"{name}_created", dict(zip(_M, labels, strict=True)), created
                    )
            yield family


class AgentMetrics:
    def __init__(self) -> None:
        #: labelled series by (metric, labels): prometheus_client's ``labels()`` costs about
        #: 1.5-3 us a call, on every request and batch (no series is ever removed)
        self._series: dict[tuple[int, tuple[str, ...]], Any] = {}
        #: per model, the series of :meth:`observe_batch`, :meth:`observe_request`,
        #: :meth:`observe_wait` and :meth:`set_cap` as plain numbers (:class:`_HotCollector`)
        self._hot_series: dict[str, _HotSeries] = {}
        r = self.registry = CollectorRegistry()
        self.failure = Counter(
            "nv_inference_request_failure", "Failed requests", (*_M, "reason"), registry=r
        )
        self.gpu_util = Gauge(
            "nv_gpu_utilization", "Device utilisation (0..1)", ("gpu_uuid",), registry=r
        )
        self.mem_total = Gauge(
            "nv_gpu_memory_total_bytes", "Device memory total", ("gpu_uuid",), registry=r
        )
        self.mem_used = Gauge(
            "nv_gpu_memory_used_bytes", "Device memory used", ("gpu_uuid",), registry=r
        )
        self.ready = Gauge("stowplan_model_ready", "1 when the model serves", _M, registry=r)
        self.dropped = Counter(
            "stowplan_request_dropped", "Requests dropped past their SLO", _M, registry=r
        )
        # residency (issue 15): seconds to rebuild an offloaded model's session from host memory
        self.prefetch_seconds = Histogram(
            "stowplan_model_prefetch_seconds",
            "Time to prefetch an offloaded model back into device memory (session rebuilt "
            "from its bytes in host memory)",
            _M,
            registry=r,
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0),
        )

        self.refused = Counter(
            "stowplan_requests_refused",
            "Requests refused (503) by load shedding, per reason",
            (*_M, "reason"),
            registry=r,
        )
        self.refused_queue_empty = Counter(
            "stowplan_requests_refused_queue_empty",
            "Requests refused while no other request was queued for the model (must stay 0)",
            _M,
            registry=r,
        )
        # admission (stowplan.agent.admission): the server's requests in flight, not per model
        self.inflight_requests = Gauge(
            "stowplan_inflight_requests",
            "Inference requests taken in by the front ends and not yet answered",
            registry=r,
        )
        self.inflight_bytes = Gauge(
            "stowplan_inflight_body_bytes",
            "Request-body bytes of the inference requests in flight",
            registry=r,
        )
        self._hot_collector = _HotCollector(self._hot_series)
        r.register(self._hot_collector)

    def _of(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once."""
        key = (id(metric), labels)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = metric.labels(*labels)
        return series

    def observe_refusal(self, model: str, reason: str, queue_empty: bool = False) -> None:
        """One load-shedding 503 (also counted as a Triton failure and a drop, as before)."""
        labels = (model, "1")
        self._of(self.failure, *labels, "overloaded").inc()
        self._of(self.dropped, *labels).inc()
        self._of(self.refused, *labels, reason).inc()
        if queue_empty:
            self._of(self.refused_queue_empty, *labels).inc()

    def watch_admission(self, requests: Callable[[], float], nbytes: Callable[[], float]) -> None:
        """Export the front ends' in-flight requests and body bytes (read when scraped: nothing
        on the request path)."""
        self.inflight_requests.set_function(requests)
        self.inflight_bytes.set_function(nbytes)

    def _hot(self, model: str) -> _HotSeries:
        """The series every batch and request of ``model`` updates, made on first use."""
        hot = self._hot_series.get(model)
        if hot is None:
            hot = self._hot_series.setdefault(model, _HotSeries())
        return hot

    def set_cap(self, model: str, cap: int) -> None:
        """``model``'s batch-size cap (AIMD's, or the static size) is now ``cap``."""
        hot = self._hot(model)
        with hot.lock:
            hot.cap = float(cap)

    def observe_wait(self, model: str, wait_s: float, bound_s: float) -> None:
        """The executor's added wait of one batch, against its bound (one duty cycle)."""
        hot = self._hot(model)
        with hot.lock:
            hot.wait.observe(wait_s)
            hot.wait_bound = bound_s
            if bound_s > 0 and wait_s > bound_s:
                hot.wait_over += 1

    def observe_batch(
        self, model: str, items: int, compute_s: float, queue_s: Sequence[float], cap: int
    ) -> None:
        hot = self._hot(model)
        with hot.lock:
            hot.count += items
            hot.exec_count += 1
            hot.queue_us += sum(queue_s) * 1e6
            hot.compute_us += compute_s * 1e6 * len(queue_s)
            hot.cap = float(cap)
            hot.batch_size.observe(items)

    def observe_request(self, model: str, latency_s: float, ok: bool, reason: str = "") -> None:
        if ok:
            hot = self._hot(model)
            with hot.lock:
                hot.success += 1
                hot.request_us += latency_s * 1e6
                hot.latency.observe(latency_s)
        else:
            self._of(self.failure, model, "1", reason or "error").inc()

    def set_ready(self, model: str, ready: bool) -> None:
        self.ready.labels(model, "1").set(1 if ready else 0)

    def set_devices(self, samples: Sequence[DeviceSample]) -> None:
        for s in samples:
            self.gpu_util.labels(s.uuid).set(s.utilization)
            self.mem_total.labels(s.uuid).set(s.memory_total_bytes)
            self.mem_used.labels(s.uuid).set(s.memory_used_bytes)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def observe_prefetch(self, model: str, seconds: float) -> None:
        """One prefetch (offloaded -> resident) of ``model`` took ``seconds``."""
        self.prefetch_seconds.labels(model, "1").observe(seconds)
