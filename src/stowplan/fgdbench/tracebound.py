"""Upper bounds on the GPU allocation ratio of the public GPU-sharing benchmark (FGD protocol).

Two bounds on one arrival multiset (the pods arrived by the reported point, 130 %):

- **offline**: what no placement of any subset of the arrived pods can exceed. A linear
  relaxation over node classes (GPU model, GPU count, CPU, memory): per class, GPU count, CPU and
  memory are summed over its nodes; every GPU that holds fractional pods holds a
  *configuration*, a multiset of fractional sizes summing to at most 1,000 milli (so two pods of
  more than 500 milli never share, and three of 400 never fit), and the pods of each size are
  covered by the slots of that size in the configurations used; a whole-GPU pod takes
  ``num_gpu`` GPUs and at most ``floor(gpus / m)`` pods of ``m`` or more GPUs fit on one node.
  Every real placement satisfies these constraints, so the LP optimum bounds it from above.
  Configurations are generated as needed (column generation: GLOP master, exact unbounded
  knapsack pricing in steps of the sizes' greatest common divisor) until none prices out.
- **protocol**: the same LP where the pods that *provably fit at their arrival whatever happened
  before* must be placed (the protocol's scheduler places every arriving pod that fits; moving
  pods later never removes them). A pod provably fits when the pods arrived before it cannot
  block every node that could take it; blocking a node needs a pod on each of its GPUs (with more
  than ``1000 - milli`` milli on each), or the CPU or the memory left below the pod's request.
  Two sufficient tests: a greedy one (each budget -- GPU touches, milli, CPU, memory arrived so
  far -- spent on the cheapest nodes independently, ``forced_kinds``) and, for pods of more than
  500 milli (the ones whose holes cost), a blocking LP (``BlockingLP``: the arrived pods assigned
  to node classes and to one way of blocking each, and they must fit the nodes they block).
  This bound holds for any online policy, with or without moves, that never evicts a pod.

CPU-only pods are left out of the LP (they only take room). Solved with OR-Tools GLOP. Pure: no
I/O. Callers: ``stowplan bench fgd``, tests.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from ortools.linear_solver import pywraplp

from stowplan.fgdbench.tracecluster import NodeRow, PodRow
from stowplan.placement.errors import InvalidProblem, SolverFailed
from stowplan.placement.fragscore import MILLI

Kind = tuple[int, int, int, int, str]  # cpu_milli, memory_mib, num_gpu, gpu_milli, gpu_spec
NodeClass = tuple[str, int, int, int]  # model, gpus, cpu_milli, memory_mib
HALF = 500


def pod_kind(p: PodRow) -> Kind:
    return (p.cpu_milli, p.memory_mib, p.num_gpu, p.gpu_milli, p.gpu_spec)


@dataclass(frozen=True)
class BoundResult:
    allocated_milli: float  # LP optimum: GPU milli that can be allocated at most
    capacity_milli: int
    forced_pods: int  # pods required placed (0 for the offline bound)

    @property
    def ratio_pct(self) -> float:
        return 100.0 * min(1.0, self.allocated_milli / self.capacity_milli)


def _admits(spec: str, model: str) -> bool:
    return not spec or model in spec.split("|")


def upper_bound(
    nodes: Sequence[NodeRow], pods: Sequence[PodRow], forced: Mapping[Kind, int] | None = None
) -> BoundResult:
    """LP bound on allocated GPU milli for ``pods`` (any subset placed; at least ``forced[k]``
    pods of kind ``k`` placed), by column generation over GPU configurations (see the module
    docstring). Raises ``SolverFailed`` if GLOP does not prove an optimum."""
    forced = forced or {}
    kinds = Counter(pod_kind(p) for p in pods if p.num_gpu > 0 and p.gpu_milli > 0)
    for k, f in forced.items():
        if f > kinds.get(k, 0):
            raise InvalidProblem(f"forced {f} pods of kind {k} but only {kinds.get(k, 0)} arrived")
    master = _Master(nodes, kinds, forced)
    return BoundResult(
        allocated_milli=master.solve(),
        capacity_milli=master.capacity,
        forced_pods=sum(forced.values()),
    )


class _Master:
    """The configuration LP of ``upper_bound``: per node class, whole-GPU pods ``w``,
    fractional pods ``z`` (by kind) and GPUs ``x`` per configuration (a multiset of fractional
    sizes summing to at most 1,000 milli); the ``z`` of one size are covered by the slots of
    that size in the configurations. Columns ``x`` are priced by an exact unbounded knapsack."""

    def __init__(
        self, nodes: Sequence[NodeRow], kinds: Mapping[Kind, int], forced: Mapping[Kind, int]
    ) -> None:
        classes = Counter((n.model, n.gpus, n.cpu_milli, n.memory_mib) for n in nodes if n.gpus > 0)
        self.capacity = sum(cls[1] * n * MILLI for cls, n in classes.items())
        solver = pywraplp.Solver.CreateSolver("GLOP")
        if solver is None:  # pragma: no cover - GLOP ships with ortools
            raise SolverFailed("GLOP is not available")
        self.solver = solver
        inf = solver.infinity()
        objective = solver.Objective()
        sizes = sorted({k[3] for k in kinds if k[3] < MILLI})
        self.unit = math.gcd(MILLI, *sizes) if sizes else MILLI
        per_kind: dict[Kind, list[pywraplp.Variable]] = {k: [] for k in kinds}
        multi_sizes = sorted({k[2] for k in kinds if k[3] >= MILLI and k[2] >= 2})
        # per class: its GPU row (x and w), GPU count, and a cover row per fractional size
        self.classes: list[tuple[pywraplp.Constraint, int, dict[int, pywraplp.Constraint]]] = []
        for c, (cls, n) in enumerate(classes.items()):
            model, gpus, cpu, mem = cls
            gpu_row = solver.Constraint(-inf, n * gpus)
            cpu_row = solver.Constraint(-inf, n * cpu)
            mem_row = solver.Constraint(-inf, n * mem)
            multi = {m: solver.Constraint(-inf, n * (gpus // m)) for m in multi_sizes}
            cover: dict[int, pywraplp.Constraint] = {}
            for kind in kinds:
                kcpu, kmem, num, milli, spec = kind
                if not _admits(spec, model) or num > gpus or kcpu > cpu or kmem > mem:
                    continue
                v = solver.NumVar(0, inf, f"p{c}_{len(per_kind[kind])}")
                if milli >= MILLI:
                    gpu_row.SetCoefficient(v, num)
                    for m, row in multi.items():
                        if num >= m:
                            row.SetCoefficient(v, 1)
                else:
                    row = cover.get(milli)
                    if row is None:
                        row = cover[milli] = solver.Constraint(-inf, 0.0)
                    row.SetCoefficient(v, 1)
                cpu_row.SetCoefficient(v, kcpu)
                mem_row.SetCoefficient(v, kmem)
                objective.SetCoefficient(v, num * milli)
                per_kind[kind].append(v)
            self.classes.append((gpu_row, n * gpus, cover))
            for milli in cover:  # start: one pod of each size per GPU
                self._add_column(c, {milli: 1})
        for kind, count in kinds.items():
            row = solver.Constraint(float(forced.get(kind, 0)), float(count))
            for v in per_kind[kind]:
                row.SetCoefficient(v, 1)
        objective.SetMaximization()

    def _add_column(self, c: int, counts: Mapping[int, int]) -> None:
        gpu_row, _, cover = self.classes[c]
        x = self.solver.NumVar(0, self.solver.infinity(), "")
        gpu_row.SetCoefficient(x, 1)
        for milli, k in counts.items():
            cover[milli].SetCoefficient(x, -k)

    def _price(self, c: int) -> tuple[float, dict[int, int]]:
        """The configuration of class ``c`` with the largest dual value (exact unbounded
        knapsack over ``unit``-milli steps), minus the GPU row's dual: its reduced cost."""
        gpu_row, _, cover = self.classes[c]
        cap = MILLI // self.unit
        best = [0.0] * (cap + 1)
        take: list[int | None] = [None] * (cap + 1)
        items = [(m // self.unit, max(0.0, row.dual_value()), m) for m, row in cover.items()]
        for u in range(1, cap + 1):
            best[u], take[u] = best[u - 1], None
            for w, value, milli in items:
                if w <= u and best[u - w] + value > best[u]:
                    best[u], take[u] = best[u - w] + value, milli
        counts: Counter[int] = Counter()
        u = cap
        while u > 0:
            step = take[u]
            if step is None:
                u -= 1
            else:
                counts[step] += 1
                u -= step // self.unit
        return best[cap] - max(0.0, gpu_row.dual_value()), dict(counts)

    def solve(self) -> float:
        """The LP optimum over all configurations (columns added until none prices out); the
        value returned adds Lagrangian slack for any residual reduced cost, so it stays an
        upper bound even when stopped by the tolerance."""
        for _ in range(10_000):
            if self.solver.Solve() != pywraplp.Solver.OPTIMAL:
                raise SolverFailed("GLOP found no optimum for the trace bound")
            priced = [self._price(c) for c in range(len(self.classes))]  # duals of this solve
            value = float(self.solver.Objective().Value())
            slack, added = 0.0, False
            for c, (rc, counts) in enumerate(priced):
                if rc > 1e-7:
                    slack += self.classes[c][1] * rc
                    self._add_column(c, counts)
                    added = True
            if not added:
                return value
        return value + slack  # pragma: no cover


def forced_kinds(nodes: Sequence[NodeRow], seq: Sequence[PodRow]) -> Counter[Kind]:
    """Pods of ``seq`` (in arrival order) that fit at their arrival whatever placement of the
    earlier pods the policy chose, counted by kind (see the module docstring)."""
    gnodes = [n for n in nodes if n.gpus > 0]
    gpus = np.asarray([n.gpus for n in gnodes], dtype=np.int64)
    cpu = np.asarray([n.cpu_milli for n in gnodes], dtype=np.int64)
    mem = np.asarray([n.memory_mib for n in gnodes], dtype=np.int64)
    model = [n.model for n in gnodes]
    cache: dict[Kind, tuple[int, np.ndarray, np.ndarray, np.ndarray]] = {}
    out: Counter[Kind] = Counter()
    touches = milli_sum = cpu_sum = mem_sum = 0
    for p in seq:
        if p.num_gpu > 0 and p.gpu_milli > 0:
            kind = pod_kind(p)
            hit = cache.get(kind)
            if hit is None:
                ok = np.asarray([_admits(p.gpu_spec, m) for m in model])
                ok &= (gpus >= p.num_gpu) & (cpu >= p.cpu_milli) & (mem >= p.memory_mib)
                # fractional: a pod on every GPU; whole: fewer than num_gpu GPUs left free
                gpu_cost = gpus[ok] if p.gpu_milli < MILLI else gpus[ok] - p.num_gpu + 1
                hit = (
                    int(ok.sum()),
                    np.cumsum(np.sort(gpu_cost)),
                    np.cumsum(np.sort(cpu[ok] - p.cpu_milli + 1)),
                    np.cumsum(np.sort(mem[ok] - p.memory_mib + 1)),
                )
                cache[kind] = hit
            eligible, gpu_cum, cpu_cum, mem_cum = hit
            budget = touches
            if p.gpu_milli < MILLI:  # each blocking touch carries more than 1000 - milli
                budget = min(budget, milli_sum // (MILLI - p.gpu_milli + 1))
            blocked = (
                int(np.searchsorted(gpu_cum, budget, side="right"))
                + int(np.searchsorted(cpu_cum, cpu_sum, side="right"))
                + int(np.searchsorted(mem_cum, mem_sum, side="right"))
            )
            if blocked < eligible:
                out[kind] += 1
        touches += p.num_gpu if p.gpu_milli > 0 else 0
        milli_sum += p.gpu_request
        cpu_sum += p.cpu_milli
        mem_sum += p.memory_mib
    return out


class BlockingLP:
    """Can the pods arrived so far be placed so that no node fits ``target``? An LP relaxation:
    ``b[c, w]`` nodes of class ``c`` blocked by way ``w`` (every GPU holds more than
    ``1000 - milli`` milli, or the CPU, or the memory left is below the request), fed by
    ``u[k, c, w]`` pods of kind ``k`` that must fit those nodes. When its optimum is below the
    number of nodes that could take ``target``, no placement blocks them all: the pod fits."""

    def __init__(self, nodes: Sequence[NodeRow], kinds: Sequence[Kind], target: Kind) -> None:
        tcpu, tmem, tnum, tmilli, tspec = target
        classes = Counter((n.model, n.gpus, n.cpu_milli, n.memory_mib) for n in nodes if n.gpus > 0)
        eligible = {
            cls: n
            for cls, n in classes.items()
            if _admits(tspec, cls[0]) and cls[1] >= tnum and cls[2] >= tcpu and cls[3] >= tmem
        }
        self.eligible = sum(eligible.values())
        self.solver = pywraplp.Solver.CreateSolver("GLOP")
        solver = self.solver
        inf = solver.infinity()
        count_rows = {k: solver.Constraint(0.0, 0.0) for k in kinds}
        self.count_rows = count_rows
        obj = solver.Objective()
        for c, ((model, gpus, cpu, mem), n) in enumerate(eligible.items()):
            bs = [solver.NumVar(0, inf, f"b{c}_{w}") for w in range(3)]
            nodes_row = solver.Constraint(-inf, n)
            for b in bs:
                nodes_row.SetCoefficient(b, 1)
                obj.SetCoefficient(b, 1)
            # per way: (need rows: sum >= coef * b), (fit rows: sum <= cap * b)
            if tmilli < MILLI:
                gpu_need = [(0, gpus), (1, gpus * (MILLI - tmilli + 1))]
            else:  # fewer than num_gpu GPUs left free: gpus - num + 1 of them used
                gpu_need = [(0, gpus - tnum + 1)]
            needs = [gpu_need, [(2, cpu - tcpu + 1)], [(3, mem - tmem + 1)]]
            for w, b in enumerate(bs):
                need_rows = []
                for res, coef in needs[w]:
                    row = solver.Constraint(0.0, inf)
                    row.SetCoefficient(b, -coef)
                    need_rows.append((res, row))
                fit_rows = []
                for res, cap in ((1, gpus * MILLI), (2, cpu), (3, mem)):
                    row = solver.Constraint(-inf, 0.0)
                    row.SetCoefficient(b, -cap)
                    fit_rows.append((res, row))
                for k in kinds:
                    kcpu, kmem, num, milli, spec = k
                    if num > 0 and (not _admits(spec, model) or num > gpus):
                        continue
                    if kcpu > cpu or kmem > mem:
                        continue
                    u = solver.NumVar(0, inf, "")
                    count_rows[k].SetCoefficient(u, 1)
                    touch = num if milli > 0 else 0
                    amount = (touch, num * milli, kcpu, kmem)
                    for res, row in need_rows + fit_rows:
                        row.SetCoefficient(u, amount[res])
        obj.SetMaximization()

    def blocks_all(self, arrived: Mapping[Kind, int]) -> bool:
        """Whether (by the relaxation) the ``arrived`` pods may block every eligible node."""
        for k, row in self.count_rows.items():
            row.SetBounds(0.0, float(arrived.get(k, 0)))
        if self.solver.Solve() != pywraplp.Solver.OPTIMAL:
            raise SolverFailed("GLOP found no optimum for the blocking LP")
        return bool(self.solver.Objective().Value() >= self.eligible - 1e-6)


def forced_by_lp(
    nodes: Sequence[NodeRow], seq: Sequence[PodRow], targets: Sequence[Kind]
) -> Counter[Kind]:
    """For each kind in ``targets``: how many of its arrivals in ``seq`` provably fit, by the
    blocking LP (fitting is monotone: once blockable, always blockable), by bisection."""
    kinds = sorted({pod_kind(p) for p in seq})
    out: Counter[Kind] = Counter()
    for target in targets:
        lp = BlockingLP(nodes, kinds, target)
        positions = [t for t, p in enumerate(seq) if pod_kind(p) == target]
        lo, hi = 0, len(positions)  # positions[:lo] forced, positions[hi:] not
        while lo < hi:
            mid = (lo + hi) // 2
            if lp.blocks_all(Counter(pod_kind(p) for p in seq[: positions[mid]])):
                hi = mid
            else:
                lo = mid + 1
        out[target] = lo
    return out


def prefix(seq: Sequence[PodRow], capacity_milli: int, arrived_pct: float) -> list[PodRow]:
    """The pods arrived while the arrived GPU request is at most ``arrived_pct`` % of capacity."""
    total, out = 0, []
    for p in seq:
        total += p.gpu_request
        if total * 100 > arrived_pct * capacity_milli:
            break
        out.append(p)
    return out


def trace_bounds(
    nodes: Sequence[NodeRow], seq: Sequence[PodRow], capacity_milli: int, arrived_pct: int
) -> tuple[BoundResult, BoundResult]:
    """(offline, protocol) bounds on the allocation reported at ``arrived_pct``: the mean over
    the events whose arrived % rounds to it, so pods up to ``arrived_pct + 0.5`` % may be placed
    and the provably placed ones are taken from those up to ``arrived_pct - 0.5`` %."""
    avail = prefix(seq, capacity_milli, arrived_pct + 0.5)
    offline = upper_bound(nodes, avail)
    early = prefix(seq, capacity_milli, arrived_pct - 0.5)
    forced = forced_kinds(nodes, early)
    # the blocking LP is tighter; it matters for the pods that leave a hole (above 500 milli)
    large = sorted({pod_kind(p) for p in early if HALF < p.gpu_milli < MILLI})
    for kind, n in forced_by_lp(nodes, early, large).items():
        forced[kind] = max(forced[kind], n)
    return offline, upper_bound(nodes, avail, forced)
