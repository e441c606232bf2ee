"""String tensors batch: requests to the ``lexicon`` example (BYTES ``text`` [N, 1]) queued
together run as one ONNX Runtime call on the stacked object arrays, and each request gets its
own rows back (real ONNX Runtime, the real executor thread)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from stowplan.agent.batching import FixedPolicy
from stowplan.agent.config import AgentSettings, BatchingConfig, ModelConfig, Policy
from stowplan.agent.protocol import InferenceRequest
from stowplan.agent.serving import Agent
from stowplan.models import LEXICON, LEXICON_LABELS


@pytest.fixture
def lexicon_agent(model_dir: Path, tmp_path: Path) -> Iterator[Agent]:
    a = Agent(AgentSettings(cache_dir=tmp_path, intra_op_threads=1))
    a.load(
        ModelConfig(
            name="lexicon",
            uri=f"file://{model_dir / 'lexicon.onnx'}",
            slo_ms=10_000,
            max_batch=64,
            batching=BatchingConfig(policy=Policy.TRITON, max_queue_delay_ms=0),
        )
    )
    yield a
    a.close()


def _hold_device(agent: Agent) -> threading.Event:
    """Occupy lexicon's device with another lane's batch until the returned event is set."""
    gate = threading.Event()
    started = threading.Event()

    def slow(batch: list[object]) -> list[object]:
        started.set()
        gate.wait(5.0)
        return list(batch)

    ex = agent.executor(agent.get("lexicon").config.device)
    ex.add_lane("gate", FixedPolicy(1, 0.0), slo_ms=60_000, run=slow)
    ex.submit("gate", None)
    assert started.wait(5.0)
    return gate


def _metric(agent: Agent, line_start: str) -> float:
    for line in agent.metrics.render().decode().splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _request(words: list[str]) -> InferenceRequest:
    return InferenceRequest.model_validate(
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(words), 1], "data": words}]}
    )


async def test_queued_string_requests_run_as_one_batch_and_keep_their_rows(
    lexicon_agent: Agent,
) -> None:
    asks = [["猫"], ["", "dog"], ["zebra", "pájaro", "鳥"], ["Hund"], ["", ""], ["chat"]]
    gate = _hold_device(lexicon_agent)
    tasks = [asyncio.create_task(lexicon_agent.predict("lexicon", _request(w))) for w in asks]
    await asyncio.sleep(0.1)  # every request is queued behind the gate
    gate.set()
    results = await asyncio.gather(*tasks)
    for words, p in zip(asks, results, strict=True):
        ids = [LEXICON.get(w, -1) for w in words]
        assert p.outputs["class_id"].reshape(-1).tolist() == ids, words
        assert p.outputs["label"].reshape(-1).tolist() == [LEXICON_LABELS.get(i, "") for i in ids]
    labels = 'model="lexicon",version="1"}'
    batches = _metric(lexicon_agent, "stowplan_batch_size_count{" + labels)
    items = _metric(lexicon_agent, "stowplan_batch_size_sum{" + labels)
    assert items == sum(len(w) for w in asks)
    assert batches < len(asks), "the queued string requests did not batch"
