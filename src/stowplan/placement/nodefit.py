"""Node-level fixed demands: node CPU / host memory and multi-GPU replicas ("gangs").

``NodeIndex`` holds, per problem, which node each GPU belongs to, each node's CPU and host
memory (unlimited for a node not listed in ``Problem.nodes``), each model's CPU / host-memory
request and GPUs per replica. ``PackIndex.build`` makes one only when the problem needs it (a
multi-GPU model, or a model with a CPU/memory request and a listed node), so problems without
fixed node demands keep the best-fit hot path unchanged. Functions here pick the GPUs of a gang
(the tightest node with enough empty eligible GPUs and CPU/memory), filter candidate GPUs by the
CPU/memory left on their node, and explain why a model fits no node at all
(``ResourcesExceedEveryNode``). Callers: packing (PackState bookkeeping), bestfit, planner,
online, lns. Pure: no I/O, mutates nothing but what it is given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from stowplan.placement.models import Problem

_TOL = 1e-6


@dataclass(frozen=True)
class NodeIndex:
    """Per-problem node tables (read-only)."""

    names: tuple[str, ...]  # nodes that host at least one GPU, in GPU order
    gpu_node: npt.NDArray[np.intp]  # (gpus,) node index of each GPU
    cpu_milli: npt.NDArray[np.float64]  # (nodes,) inf where the node is not listed
    memory_mib: npt.NDArray[np.float64]  # (nodes,) host memory, inf where not listed
    need_cpu: npt.NDArray[np.float64]  # (models,) CPU milli per replica
    need_mem: npt.NDArray[np.float64]  # (models,) host memory MiB per replica
    uses_node: npt.NDArray[np.bool_]  # (models,) requests CPU/memory and some node is limited
    gang: npt.NDArray[np.int64]  # (models,) GPUs per replica
    has_gangs: bool
    special: npt.NDArray[np.bool_]  # (models,) gang or uses_node: placed one replica at a time
    # (nodes,) replicas of type/selector-restricted models that may use the node's GPUs: a
    # gang prefers nodes fewer restricted models need (keep the scarce typed GPUs for them)
    wanted: npt.NDArray[np.float64]
    _per_node: dict[object, npt.NDArray[np.int64]] = field(default_factory=dict, compare=False)

    @staticmethod
    def build(
        problem: Problem, elig_rows: npt.NDArray[np.bool_], elig_kind: npt.NDArray[np.intp]
    ) -> NodeIndex | None:
        """The tables, or None when no model has a node demand that matters (fast path).
        ``elig_rows`` (restriction kinds, gpus; kind 0 = every GPU) and ``elig_kind``
        (models,) are ``PackIndex``'s eligibility tables."""
        models = problem.models
        has_gangs = any(m.gpus_per_replica > 1 for m in models)
        if not has_gangs and not (
            problem.nodes and any(m.cpu_milli or m.host_memory_mib for m in models)
        ):
            return None  # cheap exit: the common case must not slow best-fit down
        gang = np.asarray([m.gpus_per_replica for m in models], dtype=np.int64)
        need_cpu = np.asarray([m.cpu_milli for m in models], dtype=float)
        need_mem = np.asarray([m.host_memory_mib for m in models], dtype=float)
        names: dict[str, int] = {}
        gpu_node = np.asarray(
            [names.setdefault(g.node, len(names)) for g in problem.gpus], dtype=np.intp
        )
        cpu = np.full(len(names), math.inf)
        mem = np.full(len(names), math.inf)
        for n in problem.nodes:
            k = names.get(n.node)
            if k is not None:
                cpu[k], mem[k] = float(n.cpu_milli), float(n.memory_mib)
        limited = bool(np.isfinite(cpu).any() or np.isfinite(mem).any())
        uses_node = ((need_cpu > 0) | (need_mem > 0)) & limited
        reps = np.asarray([m.replicas for m in models], dtype=float)
        per_kind = np.bincount(elig_kind, weights=reps, minlength=len(elig_rows))
        per_kind[0] = 0.0  # unrestricted models do not make a GPU scarce
        per_gpu = per_kind @ elig_rows
        wanted = np.zeros(len(names))
        np.maximum.at(wanted, gpu_node, per_gpu)
        if not has_gangs and not uses_node.any():
            return None
        return NodeIndex(
            names=tuple(names),
            gpu_node=gpu_node,
            cpu_milli=cpu,
            memory_mib=mem,
            need_cpu=need_cpu,
            need_mem=need_mem,
            uses_node=uses_node,
            gang=gang,
            has_gangs=has_gangs,
            special=(gang > 1) | uses_node,
            wanted=wanted,
        )

    def room(
        self,
        mi: int,
        cpu_left: npt.NDArray[np.float64],
        mem_left: npt.NDArray[np.float64],
        nodes: npt.NDArray[np.intp],
    ) -> npt.NDArray[np.bool_]:
        """Whether each node of ``nodes`` has the CPU and host memory of a replica of ``mi``."""
        fits: npt.NDArray[np.bool_] = (cpu_left[nodes] >= self.need_cpu[mi] - _TOL) & (
            mem_left[nodes] >= self.need_mem[mi] - _TOL
        )
        return fits

    def node_room(
        self, mi: int, cpu_left: npt.NDArray[np.float64], mem_left: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.bool_]:
        """(nodes,) whether each node has the CPU and host memory of a replica of ``mi``."""
        fits: npt.NDArray[np.bool_] = (cpu_left >= self.need_cpu[mi] - _TOL) & (
            mem_left >= self.need_mem[mi] - _TOL
        )
        return fits

    def per_node(self, gpu_ok: npt.NDArray[np.bool_], key: object = None) -> npt.NDArray[np.int64]:
        """(nodes,) how many GPUs of ``gpu_ok`` each node has; cached under ``key`` if given
        (callers pass one when ``gpu_ok`` depends only on it)."""
        if key is not None and key in self._per_node:
            return self._per_node[key]
        out = np.bincount(self.gpu_node[gpu_ok], minlength=len(self.names))
        if key is not None:
            self._per_node[key] = out
        return out


def gang_candidates(
    nodes: NodeIndex,
    mi: int,
    free: npt.NDArray[np.bool_],
    cpu_left: npt.NDArray[np.float64],
    mem_left: npt.NDArray[np.float64],
) -> tuple[int, ...] | None:
    """GPUs for one gang replica of model ``mi``: ``free`` marks the GPUs it may take (empty,
    eligible, big enough, not reserved). The node fewest restricted models want wins, then the
    tightest: fewest such GPUs, then least CPU left, then least host memory left, then the
    first; on it the first GPUs by index."""
    k = int(nodes.gang[mi])
    ids = np.flatnonzero(free)
    if ids.size < k:
        return None
    per_node = np.bincount(nodes.gpu_node[ids], minlength=len(nodes.names))
    ok = (per_node >= k) & nodes.node_room(mi, cpu_left, mem_left)
    cand = np.flatnonzero(ok)
    if cand.size == 0:
        return None
    order = np.lexsort((cand, mem_left[cand], cpu_left[cand], per_node[cand], nodes.wanted[cand]))
    best = int(cand[order[0]])
    on_node = ids[nodes.gpu_node[ids] == best]
    return tuple(int(g) for g in on_node[:k])


def first_free_per_class(
    gpu_class: npt.NDArray[np.int64], free: npt.NDArray[np.bool_], single_class: bool = False
) -> npt.NDArray[np.intp]:
    """The lowest-index GPU of each class among ``free`` (ascending)."""
    if single_class:
        i = int(np.argmax(free)) if free.size else 0
        return np.asarray([i] if free.size and free[i] else [], dtype=np.intp)
    ids = np.flatnonzero(free)
    if ids.size == 0:
        return ids
    _, first = np.unique(gpu_class[ids], return_index=True)
    return np.sort(ids[first])


def resources_message(
    nodes: NodeIndex, mi: int, gpu_ok: npt.NDArray[np.bool_], name: str, key: object = None
) -> str | None:
    """Why no single node can host one replica of ``mi`` even empty (None: one can).

    ``gpu_ok`` marks the GPUs that admit the model (type, selector, GPU memory); ``key``
    caches its per-node count (see ``NodeIndex.per_node``)."""
    k = int(nodes.gang[mi])
    per_node = nodes.per_node(gpu_ok, key)
    eligible = per_node > 0
    room = nodes.node_room(mi, nodes.cpu_milli, nodes.memory_mib)
    if not eligible.any() or ((per_node >= k) & room).any():
        return None
    parts = []
    if k > 1:
        parts.append(f"{k} GPUs per replica (the most on one eligible node: {per_node.max()})")
    if nodes.need_cpu[mi] > 0:
        best_cpu = float(nodes.cpu_milli[eligible].max())
        parts.append(f"{nodes.need_cpu[mi]:.0f} CPU milli (eligible nodes: at most {best_cpu:g})")
    if nodes.need_mem[mi] > 0:
        best_mem = float(nodes.memory_mib[eligible].max())
        parts.append(
            f"{nodes.need_mem[mi]:.0f} MiB host memory (eligible nodes: at most {best_mem:g})"
        )
    return f"{name} needs " + ", ".join(parts) + " together on one node; no eligible node has it"
