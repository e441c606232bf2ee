"""One translation on a real kube-apiserver: InferenceModels with batching aimd, static and none
are applied, the real operator (its own ServiceAccount) places them on a GPUNode, and the agent's
config read back from that GPUNode (what the agent on the node would serve) is the config
standalone mode builds from the same manifests and the same placements. The CRD keeps every
field the translation needs (an unknown field would be pruned by the API server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from stowplan import placement, slo, standalone
from stowplan.agent.config import Policy
from stowplan.agent.gpunode_sync import desired_configs
from stowplan.api.gpunode import GPUNodeSpec
from stowplan.api.inferencemodel import InferenceModel

pytestmark = pytest.mark.cluster

NODE = "translation-node"
LABEL = {"stowplan.io/test": "translation"}  # the models select this node only


def _doc(name: str, batching: dict[str, Any], priority: int) -> dict[str, Any]:
    return {
        "apiVersion": "stowplan.io/v1alpha1",
        "kind": "InferenceModel",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": f"file:///models/{name}.onnx"},
            "replicas": 1,
            "slo": {"latencyMs": 60, "targetQPS": 300},
            "profile": {
                "latencyMs": {"base": 1.0, "perItem": 0.2},
                "memoryMiB": {"weights": 50, "perItem": 2},
                "maxBatch": 16,
            },
            "batching": batching,
            "priority": priority,
            "nodeSelector": LABEL,
        },
    }


DOCS = [
    _doc("adaptive", {"policy": "aimd", "maxQueueDelayMs": 2}, priority=3),
    _doc("fixed", {"policy": "static", "staticBatchSize": 4}, priority=-2),
    _doc("single", {"policy": "none"}, priority=0),
]


@pytest.fixture
def node(installed, operator):
    body = {
        "apiVersion": "stowplan.io/v1alpha1",
        "kind": "GPUNode",
        "metadata": {"name": NODE, "labels": LABEL},
        "spec": {},
    }
    installed.run("apply", "-f", "-", input_=yaml.safe_dump(body))
    status = {"status": {"gpus": [{"index": 0, "memoryTotalMiB": 81920, "name": "A100"}],
                         "gpuCount": 1}}  # fmt: skip
    installed.run(
        "patch", f"gpunode/{NODE}", "--subresource=status", "--type=merge",
        "-p", yaml.safe_dump(status),
    )  # fmt: skip
    yield NODE
    installed.run("delete", f"gpunode/{NODE}", "--ignore-not-found")


def test_an_applied_model_is_served_with_the_config_standalone_builds(
    installed, node, namespace, wait, tmp_path: Path
):
    installed.run("apply", "-n", namespace, "-f", "-", input_=yaml.safe_dump_all(DOCS))

    def assigned() -> GPUNodeSpec | None:
        spec = GPUNodeSpec.model_validate(installed.json("get", f"gpunode/{node}")["spec"])
        ours = [a for a in spec.assignments if a.model.startswith(f"{namespace}/")]
        return spec if len(ours) == len(DOCS) else None

    spec = wait(assigned, timeout_s=30, what="the operator to assign the three models")
    cluster = {cfg.name: (cfg, group) for cfg, group in desired_configs(spec).values()}

    stored = {
        item["metadata"]["name"]: InferenceModel.model_validate(item)
        for item in installed.json("get", "im", "-n", namespace)["items"]
    }
    manifest_file = tmp_path / "models.yaml"
    for name, im in stored.items():
        cfg, (a,) = cluster[f"{namespace}.{name}"]
        # what standalone mode builds for this manifest placed where the operator placed it
        placed = placement.Assignment(
            model=name, replica=a.replica, node=standalone.NODE, gpu=a.gpu,
            batch_size=a.batch_size, duty_cycle_ms=a.duty_cycle_ms, busy_ms=a.busy_ms,
            memory_mib=a.memory_mib,
        )  # fmt: skip
        mine = standalone.model_config(
            standalone.Manifest(im, manifest_file, 1), im.spec.model.uri, [placed]
        )
        assert mine == cfg.model_copy(update={"name": name, "base_dir": tmp_path})

        # and that config is what the spec and the plan say, field by field
        assert cfg.priority == im.spec.priority
        assert cfg.per_item_memory_mib == 2 and cfg.weights_memory_mib == 50
        assert cfg.planned_batch == a.batch_size >= 1
        assert (cfg.duty_cycle_ms, cfg.busy_ms) == (a.duty_cycle_ms, a.busy_ms)
        assert cfg.batching.policy.value == im.spec.batching.policy.value
        # a planned lane collects its batch for the plan's whole cycle
        assert cfg.batching.max_queue_delay_ms == max(
            im.spec.batching.max_queue_delay_ms, a.duty_cycle_ms
        )
    single, fixed, adaptive = (cluster[f"{namespace}.{n}"] for n in ("single", "fixed", "adaptive"))
    assert single[0].planned_batch == 1 and single[0].batching.policy is Policy.NONE
    # 300 qps of batch-1 runs at 1.2 ms each: the plan charges every one of them
    (a,) = single[1]
    assert a.busy_ms == pytest.approx(slo.items_per_cycle(300, a.duty_cycle_ms) * 1.2)
    assert fixed[0].planned_batch == 4 and fixed[0].batching.static_batch_size == 4
    assert adaptive[0].batching.target_batch_ms is not None
    assert adaptive[0].batching.target_batch_ms >= adaptive[0].busy_ms
