"""Lower bounds on the number of GPUs any valid plan needs (every plan reports one).

Each replica has a smallest possible GPU time share (its best duty-cycle level, alone) and a
smallest memory footprint; on any GPU the shares of the residents sum to at most 1 whatever the
shared duty cycle is, so one-dimensional bin-packing bounds over these sizes are valid:
the volume bound, the "items above one half need a GPU each" count and Martello-Toth's L2. Replicas
of one model need distinct GPUs, so the largest replica count is a bound too.

The squishy part makes those weak: replicas with a smallest share above one third can never be
three on a GPU, and two of them fit together only if some common duty-cycle level has room for
both. So GPUs >= |big| - (max number of compatible pairs), with the pairs bounded by a fractional
b-matching (a max flow on the bipartite double cover, ``cpsat.fractional_matching``). Callers:
planner, bench_placement. Pure; numbers in, an int out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

_EPS = 1e-9


def volume_bound(sizes: Sequence[float]) -> int:
    """ceil(sum of sizes) for sizes as fractions of one bin."""
    return max(0, math.ceil(sum(sizes) - 1e-7))


def martello_toth_l2(sizes: Sequence[float]) -> int:
    """Martello & Toth's L2 bound for bins of capacity 1 (>= the volume bound).

    Every alpha (each item size up to one half, and 0) is tried; with the sizes sorted and
    prefix sums, each alpha costs a few binary searches (O(n log n) in all, 10,000 items in ms).
    """
    arr = np.sort(np.asarray([s for s in sizes if s > _EPS], dtype=float))
    if arr.size == 0:
        return 0
    best = volume_bound(arr.tolist())
    prefix = np.concatenate(([0.0], np.cumsum(arr)))
    alphas = np.unique(np.concatenate(([0.0], arr[arr <= 0.5 + _EPS])))
    hi = np.searchsorted(arr, 1 - alphas + _EPS, side="right")  # items <= 1 - alpha + eps
    half = int(np.searchsorted(arr, 0.5 + _EPS, side="right"))  # items <= 0.5 + eps
    lo = np.searchsorted(arr, alphas - _EPS, side="left")  # items >= alpha - eps from here
    n = arr.size
    j1 = n - hi
    n2 = np.maximum(0, hi - half)
    sum2 = prefix[np.maximum(hi, half)] - prefix[half]
    j3 = prefix[half] - prefix[np.minimum(lo, half)]
    free = n2 - sum2
    bounds = j1 + n2 + np.maximum(0, np.ceil(j3 - free - 1e-7))
    return max(best, int(bounds.max()))


def gpu_lower_bound(
    shares: Sequence[float], memory_fractions: Sequence[float], replicas_per_model: Sequence[int]
) -> int:
    """Best of the bounds: time shares (L2), memory fractions (L2), distinct-GPU replicas."""
    return max(
        martello_toth_l2(shares),
        martello_toth_l2(memory_fractions),
        max(replicas_per_model, default=0),
    )


def big_pairs(
    busy_ms: np.ndarray,
    memory_mib: np.ndarray,
    ok: np.ndarray,
    levels_ms: np.ndarray,
    cap_mib: np.ndarray,
) -> list[tuple[int, int]]:
    """Pairs (i < j) of models whose replicas can share one GPU at some common level.

    Rows are models (costs over levels), ``cap_mib[i]`` the largest memory any GPU eligible to
    model i offers (the pair uses the smaller of the two: a cheap, valid over-approximation).
    """
    pairs: list[tuple[int, int]] = []
    n = busy_ms.shape[0]
    for i in range(n - 1):
        j = np.arange(i + 1, n)
        fits = ok[i] & ok[j] & (busy_ms[i] + busy_ms[j] <= levels_ms * (1 + 1e-9))
        fits &= memory_mib[i] + memory_mib[j] <= np.minimum(cap_mib[i], cap_mib[j])[:, None]
        pairs += [(i, int(k)) for k in j[fits.any(axis=1)]]
    return pairs


def matching_bound(counts: Sequence[int], max_pairs: float) -> int:
    """GPUs needed by items of which no three fit together: every GPU holds one or two, so
    GPUs >= items - (number of pairs), and ``max_pairs`` bounds the pairs from above."""
    return max(0, sum(counts) - math.floor(max_pairs + 1e-9))
