"""Model URIs: file:// (absolute and relative to the manifest folder), plain paths, and
http(s):// downloads into the cache (fetched once); bad ones fail that model only."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from stowplan.agent.config import AgentSettings, ModelConfig
from stowplan.agent.errors import ModelLoadError
from stowplan.agent.modelstore import resolve_uri
from stowplan.agent.serving import Agent


@pytest.fixture
def http_root(model_dir: Path) -> Iterator[tuple[str, list[str]]]:
    hits: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            hits.append(self.path)

    handler = functools.partial(Handler, directory=str(model_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()


def test_file_uris(model_dir: Path, tmp_path: Path) -> None:
    mlp = model_dir / "mlp.onnx"
    assert resolve_uri(f"file://{mlp}", tmp_path) == mlp
    assert resolve_uri(str(mlp), tmp_path) == mlp
    assert resolve_uri("file://mlp.onnx", tmp_path, base_dir=model_dir) == mlp
    with pytest.raises(ModelLoadError, match="not found"):
        resolve_uri("file:///nope/x.onnx", tmp_path)
    with pytest.raises(ModelLoadError, match="unsupported"):
        resolve_uri("s3://bucket/x.onnx", tmp_path)


def test_http_download_is_cached(http_root: tuple[str, list[str]], tmp_path: Path) -> None:
    base, hits = http_root
    first = resolve_uri(f"{base}/mlp.onnx", tmp_path)
    second = resolve_uri(f"{base}/mlp.onnx", tmp_path)
    assert first == second and first.parent == tmp_path and first.stat().st_size > 0
    assert len(hits) == 1  # downloaded once
    with pytest.raises(ModelLoadError, match="HTTP 404"):
        resolve_uri(f"{base}/missing.onnx", tmp_path)
    assert not list(tmp_path.glob("*.part"))


def test_agent_serves_a_model_over_http_uri(
    http_root: tuple[str, list[str]], tmp_path: Path
) -> None:
    base, _ = http_root
    agent = Agent(AgentSettings(cache_dir=tmp_path))
    try:
        assert agent.load(ModelConfig(name="m", uri=f"{base}/convnet.onnx")).state.value == "Ready"
        bad = agent.load(ModelConfig(name="b", uri=f"{base}/nope.onnx"))
        assert bad.state.value == "Failed" and "404" in bad.reason
        assert agent.models["m"].state.value == "Ready"
    finally:
        agent.close()


def test_corrupt_model_file_is_failed_with_reason(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    agent = Agent(AgentSettings(cache_dir=tmp_path))
    try:
        served = agent.load(ModelConfig(name="bad", uri=str(bad)))
        assert served.state.value == "Failed" and "cannot open" in served.reason
    finally:
        agent.close()
