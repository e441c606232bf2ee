"""Place new InferenceModels into what the last full pass wrote, without a full pass (pure).

A full pass (:func:`.fleet.reconcile_once`) lists every object, re-plans every replica and
compares every status: on 500 GPUNodes with 1,000 models that is seconds of lists and
Python per replica. A model that is only *new* changes nothing that runs, so the loop places it
into the last pass's result instead. :class:`FleetView` is that result (each GPU's replicas,
each GPUNode's assignments as written, the demands); :meth:`FleetView.slice_problem` builds a
placement Problem of a few GPUs (the busiest ones that still have room, then empty ones) with
the replicas that run on them; :func:`stowplan.placement.place_models` places only the new
replicas there, nothing moves, and :func:`check_slice` verifies every constraint of those GPUs.
The loop then writes only the GPUNodes that gain, the new models' statuses, Services,
EndpointSlices and events, and records the result here (:meth:`FleetView.add`).

No view is kept (the next change runs a full pass) when it could be wrong or incomplete: a move
or a drain in flight, a replica left unplaced, node CPU/host-memory limits or fixed GPU demands
(the slice would not see the whole node), or a write that found its object gone. A new model
that does not fit the slice entirely, or one whose name the view already holds, also goes to a
full pass, which may preempt. Any other event (a spec edit, a deletion, an agent's report) and
every resync run the full pass, which rebuilds the view. Callers: :mod:`.fleet`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from stowplan import api, placement
from stowplan.api import gpunode as gn
from stowplan.operator import inventory

#: a GPU whose time share (sum of busy / duty cycle of its replicas) is above this is full
FULL_SHARE = 0.98


@dataclass
class FleetView:
    """The fleet as the last pass left it (the leader's memory only)."""

    gpus: tuple[placement.Gpu, ...]
    residents: dict[tuple[str, int], list[placement.Assignment]]
    demands: dict[str, placement.ModelDemand]
    #: what each GPUNode's ``spec.assignments`` holds now (as written)
    node_assignments: dict[str, list[gn.Assignment]]
    #: the GPUNodes as listed by that pass (their agents' reports, for new models' statuses)
    nodes: dict[str, api.GPUNode]
    #: the nodes whose agents count as live (not stale, cordoned or deleted)
    live: set[str] = field(default_factory=set)
    memory_reserve_mib: int = 0
    #: each model's uid (a model deleted and created again under its name is not "known")
    uids: dict[str, str | None] = field(default_factory=dict)

    def slice_problem(
        self, new: Iterable[placement.ModelDemand], max_busy_gpus: int = 256
    ) -> placement.Problem:
        """The GPUs the new replicas may go to, with what runs there: up to ``max_busy_gpus``
        GPUs in use that still have time left, busiest first (best fit would try them first),
        and as many empty GPUs as the new models have replicas (one replica of a model per
        GPU)."""
        new = list(new)

        def share(key: tuple[str, int]) -> float:
            return sum(a.busy_ms / a.duty_cycle_ms for a in self.residents.get(key, []))

        used = [g for g in self.gpus if self.residents.get(g.key)]
        open_ = sorted((g for g in used if share(g.key) < FULL_SHARE), key=lambda g: -share(g.key))[
            :max_busy_gpus
        ]
        need = sum(m.replicas for m in new)
        empty = [g for g in self.gpus if not self.residents.get(g.key)][:need]
        chosen = {g.key for g in (*open_, *empty)}
        gpus = tuple(g for g in self.gpus if g.key in chosen)  # the fleet's order
        current = tuple(a for g in gpus for a in self.residents.get(g.key, []))
        names = {a.model for a in current}
        models = tuple(
            sorted(
                [*new, *(self.demands[n] for n in names if n in self.demands)],
                key=lambda m: m.name,
            )
        )
        return placement.Problem(
            gpus=gpus, models=models, current=current, memory_reserve_mib=self.memory_reserve_mib
        )

    def add(
        self,
        new: Iterable[placement.ModelDemand],
        placed: Iterable[placement.Assignment],
        node_assignments: Mapping[str, list[gn.Assignment]],
        uids: Mapping[str, str | None],
    ) -> None:
        """Record new models, their replicas and the GPUNode assignments written for them."""
        self.uids.update(uids)
        for m in new:
            self.demands[m.name] = m
        for a in placed:
            self.residents.setdefault(a.gpu_key, []).append(a)
        self.node_assignments.update(node_assignments)


def view_of(
    problem: placement.Problem,
    plan: placement.Plan,
    node_assignments: Mapping[str, list[gn.Assignment]],
    nodes: Iterable[api.GPUNode],
    live: Collection[str],
    models: Iterable[api.InferenceModel],
) -> FleetView | None:
    """The view after a full pass that wrote ``node_assignments``; None when new models must
    wait for a full pass (see the module docstring)."""
    if plan.unplaced or problem.nodes or problem.pinned:
        return None
    if any(m.gpu_milli or m.gpus_per_replica != 1 for m in problem.models):
        return None
    residents: dict[tuple[str, int], list[placement.Assignment]] = {}
    for a in plan.assignments:
        residents.setdefault(a.gpu_key, []).append(a)
    return FleetView(
        gpus=problem.gpus,
        residents=residents,
        demands={m.name: m for m in problem.models},
        node_assignments={n: list(a) for n, a in node_assignments.items()},
        nodes={n.metadata.name: n for n in nodes},
        live=set(live),
        memory_reserve_mib=problem.memory_reserve_mib,
        uids={inventory.model_key(im): im.metadata.uid for im in models},
    )


def fits_view(demand: placement.ModelDemand) -> bool:
    """Whether a new model can be placed by the view: SLO-derived demands of one GPU per
    replica (fixed fractions and gangs go through the full planner)."""
    return not demand.gpu_milli and demand.gpus_per_replica == 1


def check_slice(
    problem: placement.Problem, plan: placement.Plan, new: Collection[str]
) -> list[placement.Violation]:
    """``check_plan`` on the slice: every constraint of its GPUs; replicas of the other models
    that run outside the slice are not missing."""
    return [
        v
        for v in placement.check_plan(problem, plan)
        if not (v.code == "Missing" and v.model not in new)
    ]
