"""``stowplan bench dataplane`` runs end to end (direct ONNX Runtime, then the real agent over
HTTP/JSON and HTTP/binary, each answer checked against the direct one first) and prints one row
per path and concurrency without errors; and a path that answers wrongly stops the run."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from stowplan.agentbench import dataplane
from stowplan.cli import main


@pytest.mark.slow
def test_dataplane_benchmark_rows() -> None:
    res = CliRunner().invoke(
        main,
        ["bench", "dataplane", "--concurrency", "1", "--concurrency", "2", "--duration", "0.5"],
    )
    assert res.exit_code == 0, res.output
    rows = [line for line in res.output.splitlines() if line.startswith("| ") and "---" not in line]
    paths = [(r.split("|")[1].strip(), r.split("|")[2].strip()) for r in rows[1:]]
    assert paths == [(p, c) for p in ("direct", "http-json", "http-binary") for c in ("1", "2")]
    assert all(r.rstrip(" |").endswith("| 0") for r in rows[1:])  # no errors on any path


def test_a_path_that_answers_wrongly_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    class Wrong(dataplane.PathFactory):
        async def open(self, target: dataplane.Target):  # type: ignore[no-untyped-def]
            async def send() -> np.ndarray:
                return np.zeros((1, 10), np.float32)

            return send, lambda: None

    monkeypatch.setitem(dataplane.PATHS, "wrong", Wrong())
    with pytest.raises(RuntimeError, match="answers differently"):
        dataplane.run("mlp", (1,), 0.2, ("wrong",))
