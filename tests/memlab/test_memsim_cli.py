"""``stowplan memsim``: the JSON contract, Markdown output, report files, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from stowplan.commands.memsim import command

SAMPLE = "format_sample_session_matmul.log.gz"
RESULT_KEYS = {
    "allocator",
    "peak_reserved_bytes",
    "device_malloc_calls",
    "device_free_calls",
    "simulated_overhead_us",
    "fragmentation",
    "events_per_second",
}


def test_json_contract(logs_dir: Path) -> None:
    res = CliRunner().invoke(
        command, [str(logs_dir / SAMPLE), str(logs_dir / "mobilenetv2_infer_bs8.log.gz"), "--json"]
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert [Path(t["trace"]).name for t in data["traces"]] == [
        SAMPLE,
        "mobilenetv2_infer_bs8.log.gz",
    ]
    t = data["traces"][1]
    assert t["allocations"] == 2370 and t["deallocations"] == 2370 and t["events"] == 4740
    assert t["peak_live_bytes"] == 96_901_656
    names = [r["allocator"] for r in t["results"]]
    assert names[:6] == ["naive", "bfc", "pytorch", "bestfit", "buddy", "stowplan"]
    for r in t["results"]:
        assert set(r) >= RESULT_KEYS
    naive = t["results"][0]
    assert naive["peak_reserved_bytes"] == t["peak_live_bytes"]
    assert naive["device_malloc_calls"] == 2370


def test_markdown_single_allocator_cost_override_and_compact(
    logs_dir: Path, tmp_path: Path
) -> None:
    res = CliRunner().invoke(
        command,
        [
            str(logs_dir / SAMPLE),
            "--allocator",
            "naive",
            "--cost",
            "free_sync_us=100",
            "--save-compact",
            str(tmp_path),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "| naive |" in res.stdout and "| bfc |" not in res.stdout
    assert "| 3.46 |" in res.stdout  # 1.46 ms + 20 frees x 0.1 ms sync stall
    compact = tmp_path / "format_sample_session_matmul.stwtrace.npz"
    assert compact.is_file()
    again = CliRunner().invoke(command, [str(compact), "--allocator", "naive", "--json"])
    assert json.loads(again.stdout)["traces"][0]["peak_live_bytes"] == 16_388


def test_report_writes_markdown_and_plots(logs_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    res = CliRunner().invoke(
        command,
        [str(logs_dir / "mobilenetv2_infer_bs8.log.gz"), "--report", str(out)],
    )
    assert res.exit_code == 0, res.output
    md = (out / "README.md").read_text()
    assert "Targets (issues 5 and 15)" in md and "![" in md
    for png in ("comparison.png", "tradeoff.png", "memory_mobilenetv2_infer_bs8.png"):
        assert (out / png).stat().st_size > 1000


def test_errors_are_one_line_not_tracebacks(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(command, [str(tmp_path / "nope.log")])
    assert res.exit_code != 0 and "no such file" in res.output
    assert "Traceback" not in res.output
    bad = tmp_path / "x.log"
    bad.write_text("hello\n")
    res = runner.invoke(command, [str(bad), "--allocator", "tcmalloc"])
    assert res.exit_code != 0 and "unknown allocator" in res.output
    res = runner.invoke(command, [str(bad), "--cost", "warp=1"])
    assert res.exit_code != 0 and "unknown cost parameter" in res.output


def test_trace_allocator_selects_one_allocator_name(tmp_path: Path) -> None:
    p = "I0000 00:00:1.0 1 log_memory.cc:34] __LOG_MEMORY__ "
    lines = []
    for aid, (name, size) in enumerate(
        [("cpu", 100), ("cpu", 100), ("GPU_0_bfc", 4096), ("cpu", 100)], start=1
    ):
        lines.append(
            p + 'MemoryLogTensorAllocation { step_id: 1 kernel_name: "k" tensor { dtype: '
            f"DT_FLOAT allocation_description {{ requested_bytes: {size} allocated_bytes: "
            f'{size} allocator_name: "{name}" allocation_id: {aid} }} }} }}'
        )
    log = tmp_path / "two.log"
    log.write_text("\n".join(lines) + "\n")
    runner = CliRunner()
    res = runner.invoke(command, [str(log), "--allocator", "naive", "--json"])
    assert json.loads(res.stdout)["traces"][0]["peak_live_bytes"] == 300  # cpu: most records
    res = runner.invoke(
        command, [str(log), "--allocator", "naive", "--json", "--trace-allocator", "GPU_0_bfc"]
    )
    t = json.loads(res.stdout)["traces"][0]
    assert t["peak_live_bytes"] == 4096 and t["trace_allocator"] == "GPU_0_bfc"
    res = runner.invoke(command, [str(log), "--trace-allocator", "GPU_1_bfc"])
    assert res.exit_code != 0 and "no allocator named" in res.output
