"""Defragmentation for the trace simulator: a bounded number of moves per arrival.

``Simulator`` (``tracesim``) owns one ``Defragmenter`` when ``defrag_moves`` > 0 and calls it
(a) after a pod of more than 500 milli lands (``fill_hole``: proactively move small pods from
other nodes into the hole beside it when that lowers the fragmentation) and (b) when an arrival
fits nowhere (``make_room``: CPU-only or fractional pods off a node short of CPU/memory, the pods
off one GPU, or off the GPUs a multi-GPU pod lacks on one node). Each call makes at most
``moves_per_arrival`` moves; moved pods go where the simulator's policy puts them, and a failed
attempt is rolled back. Pure state changes: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from stowplan.fgdbench.tracecluster import Cluster, FragModel, PodRow
from stowplan.placement.fragscore import MILLI

HOLE_PODS_MILLI = 200  # pods this small fit beside the commonest large pod (810 milli)


class Simulation(Protocol):
    """What the moves need of the simulator (``tracesim.Simulator`` is one): its cluster and
    fragmentation model, the running pods per node, and its placement decisions."""

    cluster: Cluster
    frag: FragModel
    running: dict[int, list[tuple[PodRow, list[int]]]]

    def _spec(self, spec: str) -> np.ndarray: ...

    def _choose(self, pod: PodRow, exclude: int = -1) -> tuple[int, list[int]] | None: ...

    def _bestfit_gpus(self, i: int, pod: PodRow) -> list[int]: ...

    def _commit(self, i: int, pod: PodRow, gpus: list[int]) -> None: ...


class Defragmenter:
    """The moves of one simulation run (``moves`` counts them)."""

    def __init__(self, sim: Simulation, moves_per_arrival: int) -> None:
        self.sim = sim
        self.moves_per_arrival = moves_per_arrival
        self.moves = 0
        # (node, GPU) -> its pods of at most HOLE_PODS_MILLI (the ones that fit beside a large pod)
        self.small_at: dict[tuple[int, int], list[PodRow]] = {}

    def track(self, i: int, pod: PodRow, gpus: list[int], add: bool) -> None:
        if not 0 < pod.gpu_milli <= HOLE_PODS_MILLI:
            return
        at = self.small_at.setdefault((i, gpus[0]), [])
        if add:
            at.append(pod)
        else:
            at.remove(pod)
            if not at:
                del self.small_at[(i, gpus[0])]

    def fill_hole(self, i: int, g: int) -> None:
        """Proactive defragmentation after a pod of more than 500 milli lands on GPU ``g`` of node
        ``i``: move at most ``defrag_moves`` small pods from other nodes into the hole beside it,
        each the move that lowers the fragmentation of both nodes most (if any lowers it)."""
        c = self.sim.cluster
        for _ in range(self.moves_per_arrival):
            hole = int(c.left[i, g])
            before_i = self.sim.frag.frag(c.state_key[i])
            best: tuple[float, int, int, PodRow] | None = None
            for (j, gj), pods in self.small_at.items():
                if j == i:
                    continue
                for p in set(pods):
                    if p.gpu_milli > hole or c.cpu_left[i] < p.cpu_milli:
                        continue
                    if c.mem_left[i] < p.memory_mib:
                        continue
                    gain = before_i + self.sim.frag.frag(c.state_key[j])
                    gain -= self.sim.frag.frag(self._key_after(i, g, p, +1))
                    gain -= self.sim.frag.frag(self._key_after(j, gj, p, -1))
                    if gain > 1.0 and (best is None or gain > best[0]):
                        best = (gain, j, gj, p)
            if best is None:
                return
            _, j, gj, p = best
            c.unplace(j, p, [gj])
            self.sim.running[j].remove((p, [gj]))
            self.track(j, p, [gj], add=False)
            self.sim._commit(i, p, [g])
            self.moves += 1

    def _key_after(self, i: int, g: int, p: PodRow, sign: int) -> tuple[int, ...]:
        c = self.sim.cluster
        left = c.left[i, : int(c.ngpu[i])].tolist()
        left[g] -= sign * p.gpu_milli
        return (int(c.model_id[i]), int(c.cpu_left[i]) - sign * p.cpu_milli, *sorted(left))

    def make_room(self, pod: PodRow) -> bool:
        """Make room for a failed arrival: CPU first (move CPU-only pods off a node whose GPUs
        could take it), then GPU (move the pods off one GPU, or off the GPUs a multi-GPU pod
        lacks on one node)."""
        return self._cpu(pod) or self._gpu(pod) or self._multi(pod)

    def _cpu(self, pod: PodRow) -> bool:
        """Move at most ``defrag_moves`` CPU-only or fractional pods (CPU-only first, then the
        most CPU-hungry) off a node that has the GPU room but not the CPU or memory for ``pod``
        (GPUs stranded by CPU are a large share of the loss)."""
        c = self.sim.cluster
        if pod.num_gpu == 0:
            return False
        room = self.sim._spec(pod.gpu_spec).copy()
        if pod.gpu_milli < MILLI:
            room &= (c.left >= pod.gpu_milli).any(axis=1)
        else:
            room &= (c.left == MILLI).sum(axis=1) >= pod.num_gpu
        need_cpu = np.maximum(0, pod.cpu_milli - c.cpu_left)
        need_mem = np.maximum(0, pod.memory_mib - c.mem_left)
        cand = np.flatnonzero(room & ((need_cpu > 0) | (need_mem > 0)))
        if cand.size == 0:
            return False
        for i in cand[np.argsort(need_cpu[cand], kind="stable")][:32].tolist():
            movable = sorted(
                ((p, gs) for p, gs in self.sim.running.get(i, []) if p.gpu_milli < MILLI),
                key=lambda pg: (pg[0].num_gpu > 0, -pg[0].cpu_milli),
            )
            movers: list[tuple[PodRow, list[int]]] = []
            got_cpu = got_mem = 0
            for p, gs in movable:
                if got_cpu >= need_cpu[i] and got_mem >= need_mem[i]:
                    break
                if len(movers) == self.moves_per_arrival:
                    break
                movers.append((p, gs))
                got_cpu += p.cpu_milli
                got_mem += p.memory_mib
            if got_cpu < need_cpu[i] or got_mem < need_mem[i]:
                continue

            def fits_now(node: int = i) -> bool:
                return bool(c.feasible(pod, self.sim._spec(pod.gpu_spec))[node])

            if self._move_out(i, movers, fits_now):
                self.sim._commit(i, pod, self.sim._bestfit_gpus(i, pod))
                return True
        return False

    def _move_out(
        self, i: int, movers: list[tuple[PodRow, list[int]]], done: Callable[[], bool]
    ) -> bool:
        """Move ``movers`` off node ``i`` to other nodes; keep the moves only if ``done()``."""
        c = self.sim.cluster
        moved: list[tuple[PodRow, list[int], int, list[int]]] = []
        for p, gs in movers:
            c.unplace(i, p, gs)
            dest = self.sim._choose(p, exclude=i)
            if dest is None:
                c.place(i, p, gs)
                break
            c.place(dest[0], p, dest[1])
            moved.append((p, gs, dest[0], dest[1]))
        if len(moved) == len(movers) and done():
            for p, gs, j, gj in moved:
                self.sim.running[i].remove((p, gs))
                self.sim.running.setdefault(j, []).append((p, gj))
                self.track(i, p, gs, add=False)
                self.track(j, p, gj, add=True)
            self.moves += len(moved)
            return True
        for p, gs, j, gj in reversed(moved):  # roll back
            c.unplace(j, p, gj)
            c.place(i, p, gs)
        return False

    def _gpu(self, pod: PodRow) -> bool:
        """Make room for a one-GPU pod by moving at most ``defrag_moves`` fractional pods off one
        GPU to other nodes (the moved pods must fit elsewhere; all-or-nothing)."""
        if pod.num_gpu != 1:
            return False
        c = self.sim.cluster
        ok = (c.cpu_left >= pod.cpu_milli) & (c.mem_left >= pod.memory_mib)
        cand = np.flatnonzero(ok & self.sim._spec(pod.gpu_spec))
        options: list[tuple[int, int, int]] = []
        for i in cand.tolist():
            for g in range(int(c.ngpu[i])):
                short = pod.gpu_milli - int(c.left[i, g])
                if short > 0:
                    options.append((short, i, g))
        options.sort()
        tried = 0
        for short, i, g in options:
            residents = [(p, gs) for p, gs in self.sim.running.get(i, []) if gs == [g]]
            if any(p.gpu_milli >= MILLI for p, _ in residents):
                continue
            movers = self._movers(residents, short)
            if movers is None:
                continue
            tried += 1
            if tried > 32:
                break

            def fits(i: int = i, g: int = g) -> bool:
                return bool(
                    c.left[i, g] >= pod.gpu_milli
                    and c.cpu_left[i] >= pod.cpu_milli
                    and c.mem_left[i] >= pod.memory_mib
                )

            if self._move_out(i, movers, fits):
                self.sim._commit(i, pod, [g])
                return True
        return False

    def _multi(self, pod: PodRow) -> bool:
        """Make room for a pod of ``num_gpu`` >= 2 whole GPUs on one node: move every pod off the
        used GPUs it lacks there (the GPUs with the fewest residents; at most ``defrag_moves``
        pods in all, none spanning several GPUs) to other nodes."""
        if pod.num_gpu < 2 or pod.gpu_milli < MILLI:
            return False
        c = self.sim.cluster
        ok = (c.cpu_left >= pod.cpu_milli) & (c.mem_left >= pod.memory_mib)
        ok &= self.sim._spec(pod.gpu_spec) & (c.ngpu >= pod.num_gpu)
        options: list[tuple[int, int, int, list[tuple[PodRow, list[int]]]]] = []
        for i in np.flatnonzero(ok).tolist():
            n = int(c.ngpu[i])
            lack = pod.num_gpu - int((c.left[i, :n] == MILLI).sum())
            per_gpu: dict[int, list[tuple[PodRow, list[int]]]] = {}
            for p, gs in self.sim.running.get(i, []):
                for g in gs:
                    per_gpu.setdefault(g, []).append((p, gs))
            clearable = sorted(
                (len(res), sum(p.gpu_request for p, _ in res), g)
                for g, res in per_gpu.items()
                if all(len(gs) == 1 for _, gs in res)
            )[:lack]
            movers = [pg for _, _, g in clearable for pg in per_gpu[g]]
            if len(clearable) == lack and len(movers) <= self.moves_per_arrival:
                milli = sum(p.gpu_request for p, _ in movers)
                options.append((len(movers), milli, i, movers))
        options.sort(key=lambda o: o[:3])
        for _, _, i, movers in options[:32]:

            def fits(i: int = i) -> bool:
                return bool(c.feasible(pod, self.sim._spec(pod.gpu_spec))[i])

            if self._move_out(i, movers, fits):
                self.sim._commit(i, pod, self.sim._bestfit_gpus(i, pod))
                return True
        return False

    def _movers(
        self, residents: list[tuple[PodRow, list[int]]], short: int
    ) -> list[tuple[PodRow, list[int]]] | None:
        """Fewest residents (at most ``defrag_moves``) whose milli sum reaches ``short``."""
        by_size = sorted(residents, key=lambda pg: pg[0].gpu_milli)
        for p, gs in by_size:  # one pod: the smallest that suffices
            if p.gpu_milli >= short:
                return [(p, gs)]
        if self.moves_per_arrival < 2:
            return None
        chosen = by_size[::-1][: self.moves_per_arrival]  # else the largest few
        return chosen if sum(p.gpu_milli for p, _ in chosen) >= short else None
