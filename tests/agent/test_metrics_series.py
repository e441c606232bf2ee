"""The per-request metric series (plain numbers exported by a collector when scraped) read as
Prometheus series should: counters add up across threads, histogram buckets are cumulative
with the protocol's ``le`` labels, every series carries the model's labels and a ``_created``
time, and the exposition parses."""

from __future__ import annotations

import threading

from prometheus_client.parser import text_string_to_metric_families

from stowplan.agent.metrics import AgentMetrics


def _families(m: AgentMetrics) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(m.render().decode())}


def _samples(m: AgentMetrics, name: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    family = _families(m)[name]
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for s in family.samples  # type: ignore[attr-defined]
    }


def test_counters_add_up_across_threads() -> None:
    m = AgentMetrics()
    per_thread = 5_000

    def work() -> None:
        for _ in range(per_thread):
            m.observe_request("mlp", 0.003, ok=True)
            m.observe_batch("mlp", 2, 0.001, [0.0005, 0.0005], cap=8)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    labels = (("model", "mlp"), ("version", "1"))
    ok = _samples(m, "nv_inference_request_success")
    assert ok[("nv_inference_request_success_total", labels)] == 4 * per_thread
    created = _samples(m, "nv_inference_request_success_created")  # its own gauge in 0.0.4
    assert created[("nv_inference_request_success_created", labels)] > 1.7e9
    items = _samples(m, "nv_inference_count")[("nv_inference_count_total", labels)]
    assert items == 2 * 4 * per_thread
    batches = _samples(m, "nv_inference_exec_count")[("nv_inference_exec_count_total", labels)]
    assert batches == 4 * per_thread
    queue_us = _samples(m, "nv_inference_queue_duration_us")
    assert (
        abs(queue_us[("nv_inference_queue_duration_us_total", labels)] - 1000 * 4 * per_thread) < 1
    )
    assert _samples(m, "stowplan_batch_cap")[("stowplan_batch_cap", labels)] == 8


def test_histograms_are_cumulative_with_their_bounds() -> None:
    m = AgentMetrics()
    for latency_s in (0.0004, 0.001, 0.003, 0.003, 0.7, 9.0):
        m.observe_request("convnet", latency_s, ok=True)
    labels = (("model", "convnet"), ("version", "1"))
    got = _samples(m, "stowplan_request_latency_seconds")

    def bucket(le: str) -> float:
        return got[
            ("stowplan_request_latency_seconds_bucket", tuple(sorted((*labels, ("le", le)))))
        ]

    assert bucket("0.001") == 2  # 0.0004 and 0.001 itself (le is inclusive)
    assert bucket("0.002") == 2
    assert bucket("0.005") == 4
    assert bucket("0.5") == 4
    assert bucket("1.0") == 5
    assert bucket("5.0") == 5
    assert bucket("+Inf") == 6
    assert got[("stowplan_request_latency_seconds_count", labels)] == 6
    assert abs(got[("stowplan_request_latency_seconds_sum", labels)] - 9.7074) < 1e-9
    created = _samples(m, "stowplan_request_latency_seconds_created")
    assert created[("stowplan_request_latency_seconds_created", labels)] > 1.7e9


def test_wait_over_its_bound_is_counted_and_models_are_separate() -> None:
    m = AgentMetrics()
    m.observe_wait("a", 0.004, 0.010)
    m.observe_wait("a", 0.012, 0.010)
    m.observe_wait("b", 0.5, 0.0)  # no duty cycle: no bound to exceed
    over = _samples(m, "stowplan_executor_wait_over_bound")
    assert (
        over[("stowplan_executor_wait_over_bound_total", (("model", "a"), ("version", "1")))] == 1
    )
    assert (
        over[("stowplan_executor_wait_over_bound_total", (("model", "b"), ("version", "1")))] == 0
    )
    bound = _samples(m, "stowplan_executor_wait_bound_seconds")
    assert (
        bound[("stowplan_executor_wait_bound_seconds", (("model", "a"), ("version", "1")))] == 0.01
    )
    m.set_cap("c", 4)  # a model loaded and not yet asked anything has its series at zero
    ok = _samples(m, "nv_inference_request_success")
    assert ok[("nv_inference_request_success_total", (("model", "c"), ("version", "1")))] == 0
