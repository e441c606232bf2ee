"""One fleet-scale run of the operator (see the package docstring).

Measures: the time from applying every InferenceModel to all of them ``Placed=True``; the
apply -> ``Placed=True`` latency of one more model on the full fleet (``probes`` times, one
after the other); the API writes of each pass (from the operator's log); the operator's peak
resident memory (``VmHWM``). Callers: :mod:`stowplan.commands.bench_operator`.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes
import yaml

from stowplan import api, controlplane
from stowplan.api import crdgen

GPU = {"memoryTotalMiB": 81920, "name": "NVIDIA A100-SXM4-80GB"}


@dataclass(frozen=True)
class Result:
    nodes: int
    models: int
    replicas: int
    all_placed_s: float
    one_more_p50_s: float
    one_more_max_s: float
    probes: int
    max_writes_per_pass: int
    idle_writes_per_pass: int
    peak_rss_mib: float


def _model(name: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{api.GROUP}/{api.VERSION}",
        "kind": "InferenceModel",
        "metadata": {"name": name, "namespace": "bench"},
        "spec": {
            "model": {"uri": "file:///models/mlp.onnx"},
            "replicas": replicas,
            "slo": {"latencyMs": 50, "targetQPS": 50 * replicas},
            "profile": {
                "latencyMs": {"base": 1.24, "perItem": 0.17},
                "memoryMiB": {"weights": 120, "perItem": 4},
                "maxBatch": 64,
            },
        },
    }


def _placed(custom: Any) -> set[str]:
    items = custom.list_namespaced_custom_object(api.GROUP, api.VERSION, "bench", "inferencemodels")
    out = set()
    for im in items["items"]:
        conds = (im.get("status") or {}).get("conditions", [])
        if any(c["type"] == "Placed" and c["status"] == "True" for c in conds):
            out.add(im["metadata"]["name"])
    return out


def _is_placed(custom: Any, name: str) -> bool:
    """One model's Placed=True, read alone (listing every model each 50 ms would load the
    API server the probe measures)."""
    im = custom.get_namespaced_custom_object(
        api.GROUP, api.VERSION, "bench", "inferencemodels", name
    )
    conds = (im.get("status") or {}).get("conditions", [])
    return any(c["type"] == "Placed" and c["status"] == "True" for c in conds)


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(nodes: int, models: int, replicas: int, probes: int, workdir: Path) -> Result:
    with controlplane.LocalControlPlane() as cp:
        kubectl = [str(cp.kubectl), "--kubeconfig", str(cp.kubeconfig)]
        docs = "---\n".join(yaml.safe_dump(c) for c in crdgen.all_crds().values())
        subprocess.run([*kubectl, "apply", "-f", "-"], input=docs, text=True, check=True,
                       capture_output=True)  # fmt: skip
        subprocess.run([*kubectl, "wait", "--for=condition=Established", "--timeout=60s",
                        "crd/inferencemodels.stowplan.io", "crd/gpunodes.stowplan.io"],
                       check=True, capture_output=True)  # fmt: skip
        for ns in ("bench", "stowplan-system"):
            subprocess.run([*kubectl, "create", "namespace", ns], check=True, capture_output=True)
        client = kubernetes.config.new_client_from_config(str(cp.kubeconfig))
        client.rest_client.pool_manager.connection_pool_kw["maxsize"] = 16
        custom = kubernetes.client.CustomObjectsApi(client)
        status = {"status": {"gpus": [{"index": i, **GPU} for i in range(8)], "gpuCount": 8}}

        def register(i: int) -> None:
            name = f"gpu-node-{i:04d}"
            body = {"apiVersion": f"{api.GROUP}/{api.VERSION}", "kind": "GPUNode",
                    "metadata": {"name": name}, "spec": {}}  # fmt: skip
            custom.create_cluster_custom_object(api.GROUP, api.VERSION, "gpunodes", body)
            custom.patch_cluster_custom_object_status(
                api.GROUP, api.VERSION, "gpunodes", name, status
            )

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(register, range(nodes)))
        log_path = workdir / "operator.log"
        env = {**os.environ, "KUBECONFIG": str(cp.kubeconfig), "STOWPLAN_RESYNC_S": "30"}
        with log_path.open("wb") as log:
            op = subprocess.Popen(
                [sys.executable, "-m", "kopf", "run", "--standalone", "--all-namespaces",
                 "-m", "stowplan.operator"],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while "leading (lease" not in log_path.read_text(errors="replace"):
                if time.monotonic() > deadline or op.poll() is not None:
                    raise RuntimeError(log_path.read_text(errors="replace")[-3000:])
                time.sleep(0.2)

            def create(i: int) -> None:
                custom.create_namespaced_custom_object(
                    api.GROUP,
                    api.VERSION,
                    "bench",
                    "inferencemodels",
                    _model(f"m{i:05d}", replicas),
                )

            start = time.monotonic()
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(create, range(models)))
            while len(_placed(custom)) < models:
                if time.monotonic() - start > 1800 or op.poll() is not None:
                    raise RuntimeError(log_path.read_text(errors="replace")[-3000:])
                time.sleep(0.5)
            all_placed_s = time.monotonic() - start
            latencies = []
            for k in range(probes):
                name = f"probe-{k}"
                t0 = time.monotonic()
                custom.create_namespaced_custom_object(
                    api.GROUP, api.VERSION, "bench", "inferencemodels", _model(name, replicas)
                )
                while not _is_placed(custom, name):
                    if time.monotonic() - t0 > 600:
                        raise RuntimeError("probe model never placed")
                    time.sleep(0.05)
                latencies.append(time.monotonic() - t0)
            peak = _peak_rss_mib(op.pid)
        finally:
            op.terminate()
            op.wait(30)
        text = log_path.read_text(errors="replace")
        writes = [
            int(n) + int(m) for n, m in re.findall(r"(\d+) nodes and (\d+) models patched", text)
        ]
        return Result(
            nodes=nodes,
            models=models,
            replicas=models * replicas,
            all_placed_s=all_placed_s,
            one_more_p50_s=statistics.median(latencies),
            one_more_max_s=max(latencies),
            probes=probes,
            max_writes_per_pass=max(writes, default=0),
            idle_writes_per_pass=writes[-1] if writes else 0,
            peak_rss_mib=peak,
        )
