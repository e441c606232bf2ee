"""Fragmentation-aware scoring (FGD's fragmentation measure) shared by the online engine and the
trace simulator.

A node state is ``(node class, CPU milli left, *sorted free milli per GPU)``; its fragmentation
against a task distribution (``FragModel``) is the expected GPU milli a random task of the
distribution could not use there (FGD, ATC'23). Placing a task is scored by the decrease of its
node's fragmentation, as an integer sigmoid (``sigmoid_score``); within a node the candidate
GPUs are compared by ``best_gpu_choice`` (the distinct fitting free values, best score, ties to
the tightest GPU), between nodes equal scores go to the tightest node (``node_tightness``: least
free GPU milli, plus a CPU weight), then a fixed node order. ``ScoreRule`` holds the constants
that make this stowplan's online policy (``rule_for``).

Callers: ``stowplan.fgdbench.tracesim`` (the ``stowplan`` and ``fgd`` policies of the public
GPU-sharing benchmark), ``stowplan.fgdbench.tracedefrag`` (through the simulator's model) and
``stowplan.placement.online`` (``place_arrivals`` for fixed demands). Pure arithmetic: no
PackState, no trace rows, no I/O; it must stay bit-for-bit what the benchmark measured.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

MILLI = 1000
MAX_SPEC_CPU = 128_000  # the simulator's normalisers of free CPU and free GPU milli
MAX_SPEC_GPU = 8_000
# stowplan's score: sigmoid of the fragmentation decrease over this many milli, truncated to an
# integer (FGD: over 1,000): finer than FGD, see the variants table in placement/README.md
SCALE_MILLI = 150.0
# whole-GPU tasks use FGD's 1,000 instead when multi-GPU tasks carry at least this part of the
# distribution's GPU request (multigpu50, 10 seeds: 97.20 % vs 97.13 with 300 and 97.0 with 150;
# default, where they carry 7 %: 95.30 with 300 vs 95.40, 3 seeds)
MULTI_GPU_SHARE = 0.25
FGD_SCALE_MILLI = 1000.0
# node tie-break among equal scores: least free GPU milli plus this weight times free CPU left
# after placing. CPU counts for whole-GPU and CPU-only tasks (packing CPU tightly keeps other
# nodes' CPU for GPU tasks: 95.31 vs 94.97 % on default, seeds 42-43) but not for fractional
# ones (86.79 vs 86.35 % on gpushare100, seeds 42-43).
CPU_WEIGHT_WHOLE = 1.0
CPU_WEIGHT_SHARE = 0.0
CPU_WEIGHT_CPU_ONLY = 1.0

NodeKey = tuple[float, ...]  # (node class, CPU milli left, *sorted free milli per GPU)


class TaskKind(NamedTuple):
    """One kind of task of the distribution: CPU milli, GPUs (0: CPU only), milli per GPU and
    the GPU types it admits (``"A|B"``; ``""``: any). A plain tuple to hash and compare."""

    cpu_milli: int
    num_gpu: int
    gpu_milli: int
    gpu_spec: str = ""


class FragModel:
    """FGD's fragmentation measure of one node state against the task distribution.

    ``tasks`` lists the distribution, one entry per task (kinds repeat; order of first
    appearance fixes the float summation order); ``node_types`` names the node classes (the
    first element of a node key indexes it). Tasks without a GPU count in the total weight but
    add no term (as in FGD)."""

    def __init__(self, tasks: Iterable[TaskKind], node_types: Sequence[str]) -> None:
        counts = Counter(tasks)
        total = sum(counts.values())
        kinds = [(k, c / total) for k, c in counts.items() if k[1] > 0]
        self.cpu = np.asarray([k[0] for k, _ in kinds])
        self.num = np.asarray([k[1] for k, _ in kinds])
        self.milli = np.asarray([k[2] for k, _ in kinds])
        self.pop = np.asarray([w for _, w in kinds])
        self.admits = np.ones((len(node_types), len(kinds)), dtype=bool)  # (class, kind)
        for j, (k, _) in enumerate(kinds):
            if k[3]:
                allowed = set(k[3].split("|"))
                self.admits[:, j] = [m in allowed for m in node_types]
        self.cache: dict[NodeKey, float] = {}

    def frag(self, key: NodeKey) -> float:
        """Expected unusable idle GPU milli of a node state ``(class, cpu_left, *left)``."""
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        left = np.asarray(key[2:], dtype=np.int64)
        idle = float(left.sum())
        if idle == 0:
            self.cache[key] = 0.0
            return 0.0
        share = self.milli < MILLI
        thr = np.where(share, self.milli, MILLI)
        small = (left[None, :] < thr[:, None]) * left[None, :]
        partial = small.sum(axis=1).astype(float)
        fits = np.where(
            share,
            (left[None, :] >= self.milli[:, None]).any(axis=1),
            (left == MILLI).sum() >= self.num,
        )
        fits &= self.admits[int(key[0])] & (key[1] >= self.cpu)
        value = float((self.pop * np.where(fits, partial, idle)).sum())
        self.cache[key] = value
        return value


def sigmoid_score(delta: float, scale_milli: float) -> float:
    """FGD's integer score of a fragmentation decrease ``delta``: 100 / (1 + e^(-delta/scale)),
    truncated. The exact delta measured worse (94.80 vs 95.20 % on seed 42): coarse scores
    leave room for the tie-breaks."""
    return float(int(100.0 / (1.0 + math.exp(-delta / scale_milli))))


def best_gpu_choice(
    frag: FragModel,
    node_class: int,
    cpu_left: float,
    cpu_milli: float,
    left: Sequence[int],
    choices: Iterable[Sequence[int]],
    gpu_milli: int,
    scale_milli: float,
    gpu_tiebreak: bool = True,
) -> tuple[float, list[int]]:
    """(score, free milli of the chosen GPUs before placing) of the best GPU choice on one node.

    ``left`` is the free milli of each GPU of the node, ``choices`` the GPU position lists a
    task may take (at least one); the first best score wins, ties (with ``gpu_tiebreak``) to
    the choice whose first GPU has the least free milli."""
    before = frag.frag((node_class, cpu_left, *sorted(left)))
    best: tuple[float, list[int]] | None = None
    for gpus in choices:
        after = list(left)
        for g in gpus:
            after[g] -= gpu_milli
        key = (node_class, cpu_left - cpu_milli, *sorted(after))
        score = sigmoid_score(before - frag.frag(key), scale_milli)
        values = [left[g] for g in gpus]
        if (
            best is None
            or score > best[0]
            or (gpu_tiebreak and score == best[0] and values and values[0] < best[1][0])
        ):
            best = (score, values)
    if best is None:
        raise ValueError("best_gpu_choice needs at least one GPU choice")
    return best


def node_tightness(
    free_milli: float, gpu_request: float, cpu_left: float, cpu_milli: float, cpu_weight: float
) -> float:
    """The node tie-break (lower is tighter): free GPU milli after placing over 8 GPUs, plus
    ``cpu_weight`` times free CPU after placing over 128 cores."""
    value = (free_milli - gpu_request) / MAX_SPEC_GPU
    if cpu_weight:  # (an unlimited node has infinite CPU; 0 * inf would be NaN)
        value += cpu_weight * (cpu_left - cpu_milli) / MAX_SPEC_CPU
    return value


@dataclass(frozen=True)
class ScoreRule:
    """The constants of one scoring policy."""

    scale_share: float  # sigmoid scale for a fraction of one GPU
    scale_whole: float  # sigmoid scale for whole GPUs
    cpu_weight_share: float = CPU_WEIGHT_SHARE
    cpu_weight_whole: float = CPU_WEIGHT_WHOLE
    cpu_weight_cpu_only: float = CPU_WEIGHT_CPU_ONLY
    gpu_tiebreak: bool = True

    def scale(self, gpu_milli: int) -> float:
        return self.scale_whole if gpu_milli >= MILLI else self.scale_share

    def cpu_weight(self, num_gpu: int, gpu_milli: int) -> float:
        if num_gpu == 0:
            return self.cpu_weight_cpu_only
        return self.cpu_weight_share if gpu_milli < MILLI else self.cpu_weight_whole


def rule_for(tasks: Iterable[TaskKind]) -> ScoreRule:
    """stowplan's rule for a task distribution: sigmoid over ``SCALE_MILLI``; whole GPUs over
    FGD's 1,000 when multi-GPU tasks carry ``MULTI_GPU_SHARE`` of the GPU request."""
    gpu_req = multi = 0
    for t in tasks:
        req = t.num_gpu * t.gpu_milli
        gpu_req += req
        if t.num_gpu > 1:
            multi += req
    whole = FGD_SCALE_MILLI if multi >= MULTI_GPU_SHARE * gpu_req else SCALE_MILLI
    return ScoreRule(scale_share=SCALE_MILLI, scale_whole=whole)
