"""``stowplan place``: table and JSON output, clear errors for bad input (no tracebacks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from stowplan.cli import main
from stowplan.placement import InvalidProblem, check_plan
from stowplan.placement.instances import problem_from_json, read_instance

INSTANCES = Path(__file__).resolve().parents[2] / "placement" / "instances"


@pytest.mark.parametrize("path", sorted(INSTANCES.glob("*.json")), ids=lambda p: p.name)
def test_shipped_instances_solve(path: Path) -> None:
    result = CliRunner().invoke(main, ["place", str(path), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert {"gpus_used", "lower_bound", "solve_seconds", "unplaced", "assignments"} <= set(out)
    for a in out["assignments"]:
        assert {"model", "replica", "node", "gpu", "batch_size", "duty_cycle_ms"} <= set(a)
    per_gpu: dict[tuple[str, int], set[float]] = {}
    for a in out["assignments"]:
        per_gpu.setdefault((a["node"], a["gpu"]), set()).add(a["duty_cycle_ms"])
    assert all(len(v) == 1 for v in per_gpu.values())


def test_table_output_and_unplaced_reason() -> None:
    result = CliRunner().invoke(main, ["place", str(INSTANCES / "small.json")])
    assert result.exit_code == 0, result.output
    assert "| model | replica |" in result.output
    assert "too-fast/0: SLOBelowBaseLatency" in result.output


def test_time_limit_option() -> None:
    result = CliRunner().invoke(
        main, ["place", str(INSTANCES / "small.json"), "--time-limit", "0.5", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    problem = read_instance(INSTANCES / "small.json")
    assert data["gpus_used"] <= 3 and problem.models


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        pytest.param('{"gpus": [], "models": [], "extra": 1}', "extra", id="unknown top-level"),
        pytest.param(
            '{"gpus": [{"node": "n", "index": 0, "memory_mib": -5}], "models": []}',
            "memory_mib",
            id="negative memory",
        ),
        pytest.param('{"gpus": [],\n "models": [,]}', ":2:", id="bad json line"),
        pytest.param(
            '{"gpus": [], "models": [{"name": "m", "replicas": 1, "slo_ms": 10, "target_qps": 1,'
            ' "latency_ms": {"base": 1, "per_item": 1, "bogus": 2},'
            ' "memory_mib": {"weights": 1, "per_item": 1}, "max_batch": 1}]}',
            "bogus",
            id="unknown nested field",
        ),
        pytest.param(
            '{"gpus": [{"node": "n", "index": 0, "memory_mib": 1},'
            ' {"node": "n", "index": 0, "memory_mib": 1}], "models": []}',
            "listed twice",
            id="duplicate gpu",
        ),
        pytest.param(
            '{"gpus": [], "models": [], "nodes": [{"node": "n", "cpu_milli": 1, "memory_mib": 1},'
            ' {"node": "n", "cpu_milli": 2, "memory_mib": 2}]}',
            "listed twice",
            id="duplicate node",
        ),
        pytest.param(
            '{"gpus": [], "models": [],'
            ' "nodes": [{"node": "n", "cpu_milli": -1, "memory_mib": 1}]}',
            "nodes.0.cpu_milli",
            id="negative node cpu",
        ),
        pytest.param(
            '{"gpus": [], "models": [], "nodes": [{"node": "n", "cpu": 1, "memory_mib": 1}]}',
            "nodes.0",
            id="unknown node field",
        ),
        pytest.param(
            '{"gpus": [], "models": [{"name": "m", "replicas": 1, "slo_ms": 10, "target_qps": 1,'
            ' "latency_ms": {"base": 1, "per_item": 1},'
            ' "memory_mib": {"weights": 1, "per_item": 1}, "max_batch": 1,'
            ' "gpus": 4, "gpu_milli": 500}]}',
            "gpus=4 needs gpu_milli=1000",
            id="fractional gang",
        ),
        pytest.param(
            '{"gpus": [], "models": [{"name": "m", "replicas": 1, "slo_ms": 10, "target_qps": 1,'
            ' "latency_ms": {"base": 1, "per_item": 1},'
            ' "memory_mib": {"weights": 1, "per_item": 1}, "max_batch": 1,'
            ' "host_memory_mib": -5}]}',
            "models.0.host_memory_mib",
            id="negative host memory",
        ),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    result = CliRunner().invoke(main, ["place", str(path)])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert needle in result.output
    assert str(path) in result.output


def test_missing_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["place", str(tmp_path / "nope.json")])
    assert result.exit_code == 1
    assert "No such file" in result.output


def test_plan_from_json_round_trip() -> None:
    from stowplan.placement import plan
    from stowplan.placement.instances import problem_to_json

    problem = read_instance(INSTANCES / "small.json")
    again = problem_from_json(problem_to_json(problem))
    assert again == problem
    assert check_plan(problem, plan(problem)) == []


@pytest.mark.parametrize(
    ("data", "start"),
    [
        pytest.param(b'{"gpus": [],\n "models": [,]}', "bad.json:2:13: ", id="bad json"),
        pytest.param(b'{"gpus": [],\n\n "models": ["\xff"]}', "bad.json:3: not UTF-8", id="bytes"),
        pytest.param(b'{"gpus": [], "models": [], "x": 1}', "bad.json: x: ", id="bad field"),
        pytest.param(b"", "bad.json:1:1: Expecting value", id="empty"),
    ],
)
def test_read_instance_names_the_file_and_line(tmp_path: Path, data: bytes, start: str) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(data)
    with pytest.raises(InvalidProblem) as err:
        read_instance(path)
    assert str(err.value).startswith(str(tmp_path / start))


def test_read_instance_of_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidProblem, match=r"nope\.json: No such file"):
        read_instance(tmp_path / "nope.json")


def test_a_binary_file_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07\x12\x07pytorch\xff\xfe")
    result = CliRunner().invoke(main, ["place", str(path)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{path}:1: not UTF-8" in result.output
