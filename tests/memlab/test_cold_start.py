"""The cold (first-run) stowplan allocator vs the caching baselines; its expandable heap."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from stowplan.memlab.alloc_trace import Trace
from stowplan.memlab.allocators import CACHING_BASELINES
from stowplan.memlab.allocators.base import ExpandableHeap
from stowplan.memlab.device import SimDevice
from stowplan.memlab.simulate import replay

MIB = 1 << 20
SHIPPED = [
    "bert_base_infer_bs8.log.gz",
    "format_sample_session_matmul.log.gz",
    "mobilenetv2_infer_bs8.log.gz",
    "resnet50_infer_bs1.log.gz",
    "resnet50_infer_bs32.log.gz",
]


@pytest.mark.parametrize("name", SHIPPED)
def test_cold_never_above_best_baseline_nor_more_calls_than_pytorch(
    name: str, parsed: Callable[[str], Trace]
) -> None:
    trace = parsed(name)
    cold = replay(trace, "stowplan", repeats=1, check=True)
    base = {a: replay(trace, a, repeats=1) for a in CACHING_BASELINES}
    best = min(r.peak_reserved_bytes for r in base.values())
    assert cold.peak_reserved_bytes <= best
    calls = cold.device_malloc_calls + cold.device_free_calls
    assert calls <= base["pytorch"].device_malloc_calls + base["pytorch"].device_free_calls


def test_expandable_heap_maps_on_demand_and_merges_across_mappings() -> None:
    dev = SimDevice()
    heap = ExpandableHeap(dev, lambda b, r: b - r >= 256, lambda _end, _req: 0)
    a = heap.malloc(3 * MIB)
    assert dev.reserved_bytes == 4 * MIB and dev.malloc_calls == 1  # rounded to 2 MiB pages
    b = heap.malloc(3 * MIB)
    assert dev.reserved_bytes == 6 * MIB and dev.malloc_calls == 2
    heap.free(a)
    heap.free(b)
    assert heap.largest_free() == 6 * MIB  # one block across the two mappings
    heap.malloc(6 * MIB)
    assert dev.reserved_bytes == 6 * MIB and dev.malloc_calls == 2  # no new mapping
