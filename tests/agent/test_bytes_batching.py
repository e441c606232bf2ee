"""String tensors batch: requests to the ``lexicon`` example (BYTES ``text`` [N, 1]) queued
together run as one ONNX Runtime call on the stacked object arrays, and each request gets its
own rows back (real ONNX Runtime, the real executor thread)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from stowplan.agent.config import AgentSettings, BatchingConfig, ModelConfig, Policy
from stowplan.agent.protocol import InferenceRequest
from stowplan.agent.serving import Agent
from stowplan.models import LEXICON, LEXICON_LABELS
from stowplan.testing.agent import hold_device, metric_value


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


def _request(words: list[str]) -> InferenceRequest:
    return InferenceRequest.model_validate(
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(words), 1], "data": words}]}
    )


async def test_queued_string_requests_run_as_one_batch_and_keep_their_rows(
    lexicon_agent: Agent,
) -> None:
    asks = [["猫"], ["", "dog"], ["zebra", "pájaro", "鳥"], ["Hund"], ["", ""], ["chat"]]
    gate = hold_device(lexicon_agent, "lexicon")
    tasks = [asyncio.create_task(lexicon_agent.predict("lexicon", _request(w))) for w in asks]
    await asyncio.sleep(0.1)  # every request is queued behind the gate
    gate.set()
    results = await asyncio.gather(*tasks)
    for words, p in zip(asks, results, strict=True):
        ids = [LEXICON.get(w, -1) for w in words]
        assert p.outputs["class_id"].reshape(-1).tolist() == ids, words
        assert p.outputs["label"].reshape(-1).tolist() == [LEXICON_LABELS.get(i, "") for i in ids]
    labels = 'model="lexicon",version="1"}'
    batches = metric_value(lexicon_agent, "stowplan_batch_size_count{" + labels)
    items = metric_value(lexicon_agent, "stowplan_batch_size_sum{" + labels)
    assert items == sum(len(w) for w in asks)
    assert batches < len(asks), "the queued string requests did not batch"
