"""Online simulation of the public GPU-sharing benchmark (Alibaba 2023 trace, FGD protocol).

Pure functions over parsed CSV rows (``NodeRow``/``PodRow``): the bench command reads the files.
Protocol (``fgd-simulator-results/README.md``): the pod list, sorted by name, is shuffled with
the seed and inflated by draws with replacement until the arrived GPU request reaches 130 % of
cluster capacity (or trimmed when above); pods arrive one by one, never leave; a pod fits a node
when CPU and memory fit, its ``gpu_spec`` admits the node's GPU model and either one GPU has
enough free milli (fractional pod) or ``num_gpu`` GPUs are completely free. Ties between equal
integer scores go to a random but fixed node order (the simulator's random name prefix).

Policies: ``bestfit`` (the simulator's BestFit score, to check the protocol), ``fgd`` (a
re-implementation of fragmentation gradient descent), ``stowplan`` (our online mode: FGD's
fragmentation score against the workload's task distribution, ties broken by best fit instead of
at random: the tightest GPU in a node, the node with the least free GPU (plus free CPU, except
for fractional pods)) and ``stowplan`` + ``defrag_moves`` > 0 (at most that many moves per
arrival, made by ``tracedefrag.Defragmenter``). The measure, the score and the tie-breaks live
in ``fragscore``, which the engine's ``online.place_arrivals`` uses too, so the benchmarked
policy is the product's (``tests/placement/test_online_trace_consistency.py`` replays arrivals
through both). The rows, the arrival sequence and the cluster model are ``tracecluster``'s
(import them from there). Callers: ``stowplan bench fgd``, tests.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from stowplan.fgdbench.tracecluster import (
    HALF_MILLI,
    Cluster,
    FragModel,
    IdleBreakdown,
    NodeRow,
    PodRow,
    gpu_choices,
    idle_breakdown,
)
from stowplan.fgdbench.tracedefrag import Defragmenter
from stowplan.placement.fragscore import (
    MAX_SPEC_CPU,
    MAX_SPEC_GPU,
    MILLI,
    ScoreRule,
    best_gpu_choice,
    node_tightness,
    rule_for,
)

__all__ = ["SimResult", "Simulator"]


@dataclass
class SimResult:
    workload: str
    policy: str
    seed: int
    allocation_pct: dict[int, float]  # arrived % (rounded) -> mean allocation %
    placed: int
    failed: int
    moves: int
    seconds: float
    idle: IdleBreakdown | None = None  # of the final state

    def at(self, arrived_pct: int) -> float:
        return self.allocation_pct.get(arrived_pct, math.nan)


class Simulator:
    """One run: a policy over one arrival sequence."""

    def __init__(
        self,
        nodes: Sequence[NodeRow],
        typical: Sequence[PodRow],
        policy: str,
        seed: int,
        defrag_moves: int = 0,
        node_order: Sequence[int] | None = None,
    ) -> None:
        """``node_order``: the rank of each node among equal scores (default: a per-seed
        shuffle, the simulator's random name prefix; the identity matches the engine's online
        mode, which ranks nodes by their first GPU)."""
        if policy not in ("bestfit", "fgd", "stowplan"):
            raise ValueError(f"unknown policy {policy!r}")
        self.cluster = Cluster(nodes)
        self.typical = list(typical)
        self.policy = policy
        self.defrag_moves = defrag_moves
        self.frag = FragModel(typical, self.cluster.models)
        if node_order is None:
            rank = list(range(len(nodes)))
            random.Random(seed * 7919 + 1).shuffle(rank)
        else:
            if sorted(node_order) != list(range(len(nodes))):
                raise ValueError("node_order must be a permutation of the node positions")
            rank = list(node_order)
        self.rank = np.asarray(rank)
        self.spec_cache: dict[str, np.ndarray] = {}
        self.running: dict[int, list[tuple[PodRow, list[int]]]] = {}
        self.defrag = Defragmenter(self, defrag_moves) if defrag_moves else None
        # stowplan: fragscore's rule (sigmoid over 150 milli, or FGD's 1,000 for whole GPUs
        # when multi-GPU pods carry a quarter of the GPU request; best-fit tie-breaks); FGD:
        # sigmoid over 1,000 and ties to the node order only
        if policy == "stowplan":
            self.rule = rule_for(p.kind for p in self.typical)
        else:
            self.rule = ScoreRule(scale_share=1000.0, scale_whole=1000.0, gpu_tiebreak=False)

    def _spec(self, spec: str) -> np.ndarray:
        m = self.spec_cache.get(spec)
        if m is None:
            m = self.spec_cache[spec] = self.cluster.spec_mask(spec)
        return m

    def _choose(self, pod: PodRow, exclude: int = -1) -> tuple[int, list[int]] | None:
        c = self.cluster
        ok = c.feasible(pod, self._spec(pod.gpu_spec))
        if exclude >= 0:
            ok[exclude] = False
        cand = np.flatnonzero(ok)
        if cand.size == 0:
            return None
        if self.policy == "bestfit":
            s = (c.cpu_left[cand] - pod.cpu_milli) / MAX_SPEC_CPU * 0.5
            s = s + (c.left[cand].sum(axis=1) - pod.gpu_request) / MAX_SPEC_GPU * 0.5
            score = ((1.0 - s) * 100).astype(np.int64)
            best = cand[np.lexsort((self.rank[cand], -score))[0]]
            i = int(best)
            return i, self._bestfit_gpus(i, pod)
        # fgd / stowplan: evaluate each distinct node state once
        per_state: dict[tuple[int, ...], tuple[float, list[int]]] = {}
        scores = np.empty(cand.size)
        tieb = np.empty(cand.size)
        w_cpu = self.rule.cpu_weight(pod.num_gpu, pod.gpu_milli)
        for k, i in enumerate(cand.tolist()):
            key = c.state_key[i]
            hit = per_state.get(key)
            if hit is None:
                hit = self._eval_state(i, pod)
                per_state[key] = hit
            scores[k] = hit[0]
            tieb[k] = node_tightness(
                int(c.left[i].sum()), pod.gpu_request, int(c.cpu_left[i]), pod.cpu_milli, w_cpu
            )
        if self.policy == "fgd":
            order = np.lexsort((self.rank[cand], -scores))
        else:  # fragmentation score, then the tightest node (best fit), then the fixed order
            order = np.lexsort((self.rank[cand], tieb, -scores))
        i = int(cand[order[0]])
        key = c.state_key[i]
        # map the chosen left value back to this node's GPU indices
        return i, self._gpus_for(i, pod, per_state[key][1])

    def _eval_state(self, i: int, pod: PodRow) -> tuple[float, list[int]]:
        c = self.cluster
        n = int(c.ngpu[i])
        return best_gpu_choice(
            self.frag,
            int(c.model_id[i]),
            int(c.cpu_left[i]),
            pod.cpu_milli,
            c.left[i, :n].tolist(),
            gpu_choices(c.left[i], n, pod),
            pod.gpu_milli,
            self.rule.scale(pod.gpu_milli),
            self.rule.gpu_tiebreak,
        )

    def _gpus_for(self, i: int, pod: PodRow, left_values: list[int]) -> list[int]:
        if pod.num_gpu == 0:
            return []
        if pod.gpu_milli >= MILLI:
            return self._bestfit_gpus(i, pod)
        row = self.cluster.left[i].tolist()
        return [row.index(left_values[0])]

    def _bestfit_gpus(self, i: int, pod: PodRow) -> list[int]:
        row = self.cluster.left[i, : int(self.cluster.ngpu[i])].tolist()
        if pod.num_gpu == 0:
            return []
        if pod.gpu_milli < MILLI:
            fits = [(v, g) for g, v in enumerate(row) if v >= pod.gpu_milli]
            return [min(fits)[1]]
        return [g for g, v in enumerate(row) if v == MILLI][: pod.num_gpu]

    def step(self, pod: PodRow) -> tuple[int, list[int]] | None:
        """One arrival without defragmentation: (node, GPU indices) where the policy puts it
        (and commits it there), or None when it fits nowhere."""
        choice = self._choose(pod)
        if choice is not None:
            self._commit(choice[0], pod, choice[1])
        return choice

    def _commit(self, i: int, pod: PodRow, gpus: list[int]) -> None:
        self.cluster.place(i, pod, gpus)
        self.running.setdefault(i, []).append((pod, gpus))
        if self.defrag is not None:
            self.defrag.track(i, pod, gpus, add=True)

    def run(
        self, seq: Sequence[PodRow], workload: str, seed: int, clock: Callable[[], float]
    ) -> SimResult:
        start = clock()
        cap = self.cluster.capacity_milli
        arrived = 0
        sums: dict[int, list[float]] = {}
        placed = failed = 0
        for pod in seq:
            arrived += pod.gpu_request
            choice = self._choose(pod)
            if choice is not None:
                self._commit(choice[0], pod, choice[1])
                placed += 1
                if self.defrag is not None and HALF_MILLI < pod.gpu_milli < MILLI:
                    self.defrag.fill_hole(choice[0], choice[1][0])
            elif self.defrag is not None and self.defrag.make_room(pod):
                placed += 1
            else:
                failed += 1
            k = round(arrived * 100 / cap)
            acc = sums.setdefault(k, [0.0, 0.0])
            acc[0] += self.cluster.allocated_milli() * 100 / cap
            acc[1] += 1
        policy = self.policy + (f"+defrag{self.defrag_moves}" if self.defrag_moves else "")
        return SimResult(
            workload=workload,
            policy=policy,
            seed=seed,
            allocation_pct={k: v[0] / v[1] for k, v in sums.items()},
            placed=placed,
            failed=failed,
            moves=self.defrag.moves if self.defrag is not None else 0,
            seconds=clock() - start,
            idle=idle_breakdown(self.cluster, self.running, self.typical),
        )
