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
through both). Callers: ``stowplan bench fgd``, tests.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from stowplan.placement import fragscore
from stowplan.placement.fragscore import (
    MAX_SPEC_CPU,
    MAX_SPEC_GPU,
    MILLI,
    ScoreRule,
    TaskKind,
    best_gpu_choice,
    node_tightness,
    rule_for,
)

__all__ = [
    "MAX_SPEC_CPU",
    "MAX_SPEC_GPU",
    "MILLI",
    "Cluster",
    "FragModel",
    "IdleBreakdown",
    "NodeRow",
    "PodRow",
    "SimResult",
    "Simulator",
    "arrivals",
    "gpu_choices",
    "idle_breakdown",
]

MAX_GPUS = 8
HALF_MILLI = 500  # two fractional pods above this never share a GPU


@dataclass(frozen=True)
class NodeRow:
    name: str
    cpu_milli: int
    memory_mib: int
    gpus: int
    model: str


@dataclass(frozen=True)
class PodRow:
    name: str
    cpu_milli: int
    memory_mib: int
    num_gpu: int
    gpu_milli: int
    gpu_spec: str = ""

    @property
    def gpu_request(self) -> int:
        return self.num_gpu * self.gpu_milli

    @property
    def kind(self) -> TaskKind:
        return TaskKind(self.cpu_milli, self.num_gpu, self.gpu_milli, self.gpu_spec)


def arrivals(
    pods: Sequence[PodRow], capacity_milli: int, seed: int, tune: float = 1.3
) -> list[PodRow]:
    """The arrival sequence of one seed: shuffled originals, inflated or trimmed to ``tune``."""
    rng = random.Random(seed)
    base = sorted(pods, key=lambda p: p.name)
    seq = list(base)
    rng.shuffle(seq)
    target = tune * capacity_milli
    total = sum(p.gpu_request for p in seq)
    if total < target:
        while True:
            p = base[rng.randrange(len(base))]
            if total + p.gpu_request > target:
                break
            seq.append(p)
            total += p.gpu_request
    else:
        while total > target:
            p = seq.pop(rng.randrange(len(seq)))
            total -= p.gpu_request
    return seq


@dataclass
class Cluster:
    """Mutable cluster state: per node CPU/memory left and per GPU milli left."""

    nodes: Sequence[NodeRow]
    models: list[str] = field(init=False)
    model_id: np.ndarray = field(init=False)
    cpu_left: np.ndarray = field(init=False)
    mem_left: np.ndarray = field(init=False)
    left: np.ndarray = field(init=False)  # (N, 8), 0 where the GPU does not exist
    ngpu: np.ndarray = field(init=False)
    state_key: list[tuple[int, ...]] = field(init=False)

    def __post_init__(self) -> None:
        self.models = sorted({n.model for n in self.nodes})
        self.model_id = np.asarray([self.models.index(n.model) for n in self.nodes])
        self.cpu_left = np.asarray([n.cpu_milli for n in self.nodes], dtype=np.int64)
        self.mem_left = np.asarray([n.memory_mib for n in self.nodes], dtype=np.int64)
        self.ngpu = np.asarray([n.gpus for n in self.nodes], dtype=np.int64)
        self.left = np.zeros((len(self.nodes), MAX_GPUS), dtype=np.int64)
        for i, n in enumerate(self.nodes):
            self.left[i, : n.gpus] = MILLI
        self.state_key = [self._key(i) for i in range(len(self.nodes))]

    @property
    def capacity_milli(self) -> int:
        return int(self.ngpu.sum()) * MILLI

    def allocated_milli(self) -> int:
        return self.capacity_milli - int(self.left.sum())

    def _key(self, i: int) -> tuple[int, ...]:
        g = int(self.ngpu[i])
        return (int(self.model_id[i]), int(self.cpu_left[i]), *sorted(self.left[i, :g].tolist()))

    def spec_mask(self, spec: str) -> np.ndarray:
        if not spec:
            return np.ones(len(self.nodes), dtype=bool)
        allowed = [self.models.index(m) for m in spec.split("|") if m in self.models]
        return np.isin(self.model_id, allowed)

    def feasible(self, pod: PodRow, spec_mask: np.ndarray) -> np.ndarray:
        ok = (self.cpu_left >= pod.cpu_milli) & (self.mem_left >= pod.memory_mib)
        if pod.num_gpu == 0:
            return ok
        ok &= spec_mask
        if pod.gpu_milli < MILLI:
            shared: np.ndarray = ok & (self.left >= pod.gpu_milli).any(axis=1)
            return shared
        whole: np.ndarray = ok & ((self.left == MILLI).sum(axis=1) >= pod.num_gpu)
        return whole

    def place(self, i: int, pod: PodRow, gpus: Sequence[int]) -> None:
        self.cpu_left[i] -= pod.cpu_milli
        self.mem_left[i] -= pod.memory_mib
        for g in gpus:
            self.left[i, g] -= pod.gpu_milli
        self.state_key[i] = self._key(i)

    def unplace(self, i: int, pod: PodRow, gpus: Sequence[int]) -> None:
        self.cpu_left[i] += pod.cpu_milli
        self.mem_left[i] += pod.memory_mib
        for g in gpus:
            self.left[i, g] += pod.gpu_milli
        self.state_key[i] = self._key(i)


def gpu_choices(left: np.ndarray, n: int, pod: PodRow) -> list[list[int]]:
    """GPU index choices on one node: each distinct fitting left value (share) or the first
    ``num_gpu`` free GPUs (whole)."""
    row = left[:n].tolist()
    if pod.num_gpu == 0:
        return [[]]
    if pod.gpu_milli < MILLI:
        seen: dict[int, int] = {}
        for g, v in enumerate(row):
            if v >= pod.gpu_milli and v not in seen:
                seen[v] = g
        return [[g] for g in seen.values()]
    free = [g for g, v in enumerate(row) if v == MILLI]
    return [free[: pod.num_gpu]] if len(free) >= pod.num_gpu else []


class FragModel(fragscore.FragModel):
    """``fragscore.FragModel`` of a workload's pod rows (node classes: the GPU models)."""

    def __init__(self, typical: Sequence[PodRow], models: Sequence[str]) -> None:
        super().__init__((p.kind for p in typical), models)


Score = Callable[[Cluster, int, PodRow, list[int]], float]


@dataclass(frozen=True)
class IdleBreakdown:
    """Where the idle GPU milli of a final state lies (sums to ``capacity - allocated``)."""

    large_share_gpus: int  # GPUs holding a fractional pod of more than 500 milli
    large_share_milli: int  # idle milli on those GPUs (the hole beside the large pod)
    other_partial_milli: int  # idle milli on every other partly used GPU
    stranded_free_milli: int  # whole free GPUs on nodes where no GPU pod kind fits CPU/memory
    free_milli: int  # whole free GPUs elsewhere (no pod that arrived later fitted them)


def idle_breakdown(
    cluster: Cluster,
    running: dict[int, list[tuple[PodRow, list[int]]]],
    typical: Sequence[PodRow],
) -> IdleBreakdown:
    """Split the idle GPU capacity of ``cluster`` by the cause visible in the final state."""
    large = np.zeros(cluster.left.shape, dtype=bool)
    for i, pods in running.items():
        for p, gs in pods:
            if 500 < p.gpu_milli < MILLI:
                large[i, gs[0]] = True
    gpu_kinds = {(p.cpu_milli, p.memory_mib, p.gpu_spec) for p in typical if p.num_gpu > 0}
    usable = np.zeros(len(cluster.nodes), dtype=bool)
    for cpu, mem, spec in gpu_kinds:
        spec_ok = cluster.spec_mask(spec)
        usable |= spec_ok & (cluster.cpu_left >= cpu) & (cluster.mem_left >= mem)
    exists = np.arange(MAX_GPUS)[None, :] < cluster.ngpu[:, None]
    free = exists & (cluster.left == MILLI)
    partial = exists & (cluster.left < MILLI)
    stranded = free & ~usable[:, None]
    return IdleBreakdown(
        large_share_gpus=int(large.sum()),
        large_share_milli=int(cluster.left[large].sum()),
        other_partial_milli=int(cluster.left[partial & ~large].sum()),
        stranded_free_milli=int(cluster.left[stranded].sum()),
        free_milli=int(cluster.left[free & ~stranded].sum()),
    )


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
        from stowplan.fgdbench.tracedefrag import Defragmenter  # it imports this module

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
