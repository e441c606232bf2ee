"""The shipped mix instance (Alibaba 2023 trace pods + SLO models on trace nodes): it is what
``synth.alibaba_mix_problem`` builds from the shared data, and ``stowplan place`` solves it.

Rebuild the file after changing the builder: ``STOWPLAN_WRITE_INSTANCES=1 pytest <this file>``.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from stowplan.cli import main
from stowplan.fgdbench.synth import alibaba_mix_problem
from stowplan.fgdbench.tracefiles import load_fits, load_nodes, load_pods
from stowplan.placement import check_plan, plan
from stowplan.placement.instances import instance_text, read_instance

REPO = Path(__file__).resolve().parents[2]
MIX = REPO / "placement" / "instances" / "alibaba-mix.json"


def _data() -> Path:
    return Path(os.environ.get("STOWPLAN_DATA") or REPO.parent / "shared" / "data")


def test_mix_instance_is_what_the_builder_makes() -> None:
    root = _data()
    trace = root / "alibaba-gpu-v2023"
    fits_csv = root / "gpu-inference-latency" / "latency_vs_batch_linear_fits.csv"
    if not (trace.is_dir() and fits_csv.is_file()):
        pytest.skip(f"shared data not present under {root}")
    built = alibaba_mix_problem(
        load_nodes(trace / "openb_node_list_gpu_node.csv"),
        load_pods(trace / "openb_pod_list_multigpu50.csv"),
        load_fits(fits_csv),
    )
    if os.environ.get("STOWPLAN_WRITE_INSTANCES") == "1":
        MIX.write_text(instance_text(built))
    assert read_instance(MIX) == built
    assert MIX.stat().st_size < 60_000


def test_mix_instance_has_both_kinds() -> None:
    problem = read_instance(MIX)
    gangs = Counter(m.gpus_per_replica for m in problem.models if m.gpus_per_replica > 1)
    assert gangs and set(gangs) <= {2, 4, 8}
    assert any(0 < m.gpu_milli < 1000 for m in problem.models)  # fractions
    assert any(m.gpu_milli == 0 and m.gpu_type for m in problem.models)  # typed SLO models
    assert len(problem.nodes) == len({g.node for g in problem.gpus}) == 20


def test_place_cli_on_the_mix_instance() -> None:
    result = CliRunner().invoke(main, ["place", str(MIX), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    gangs = [a for a in out["assignments"] if "extra_gpus" in a]
    assert gangs and all(len(a["extra_gpus"]) in (1, 3, 7) for a in gangs)
    problem = read_instance(MIX)
    cpu: Counter[str] = Counter()
    need = {m.name: m.cpu_milli for m in problem.models}
    for a in out["assignments"]:
        cpu[a["node"]] += need[a["model"]]
    limit = {n.node: n.cpu_milli for n in problem.nodes}
    assert all(cpu[n] <= limit[n] for n in cpu)
    assert out["gpus_used"] >= out["lower_bound"] or out["unplaced"]


def test_mix_instance_with_a_time_budget_is_valid() -> None:
    problem = read_instance(MIX)
    fast = plan(problem)
    slow = plan(problem, time_limit_s=1.0)
    assert check_plan(problem, fast) == [] and check_plan(problem, slow) == []
    assert (len(slow.unplaced), slow.gpus_used) <= (len(fast.unplaced), fast.gpus_used)
