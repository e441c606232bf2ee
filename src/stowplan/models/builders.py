"""Real ONNX graphs built with ``onnx.helper``: a small MLP classifier and a small conv net.

Weights are drawn from a seeded numpy generator, so the same recipe always yields the same
bytes. Every model has one float32 input named ``input`` with a dynamic batch dimension and one
float32 output named ``logits``. Callers: :mod:`stowplan.models` users (CLI, standalone mode,
tests, benchmarks). This module must not download anything or import onnxruntime.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # readable by every onnxruntime release we pin or are likely to meet


@dataclass(frozen=True)
class ExampleModel:
    """A named recipe: ``build(seed)`` returns the ONNX model; ``filename`` is where it goes."""

    name: str
    filename: str
    description: str
    build: Callable[[int], onnx.ModelProto]


def _init(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    scale = np.sqrt(2.0 / max(fan_in, 1))
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def build_mlp(
    seed: int = 0, in_features: int = 64, hidden: int = 256, classes: int = 10, layers: int = 3
) -> onnx.ModelProto:
    """A ReLU MLP classifier: input [N, in_features] -> logits [N, classes]."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    prev, width = "input", in_features
    for i in range(layers):
        out_width = classes if i == layers - 1 else hidden
        w, b = f"fc{i}.weight", f"fc{i}.bias"
        inits.append(_init(rng, w, (width, out_width)))
        inits.append(numpy_helper.from_array(np.zeros(out_width, np.float32), b))
        out = "logits" if i == layers - 1 else f"h{i}"
        gemm_out = out if i == layers - 1 else f"g{i}"
        nodes.append(helper.make_node("Gemm", [prev, w, b], [gemm_out], name=f"fc{i}"))
        if i != layers - 1:
            nodes.append(helper.make_node("Relu", [gemm_out], [out], name=f"relu{i}"))
        prev, width = out, out_width
    graph = helper.make_graph(
        nodes,
        "stowplan_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", in_features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        inits,
    )
    return _finish(graph)


def build_convnet(
    seed: int = 0, channels: int = 3, size: int = 32, classes: int = 10
) -> onnx.ModelProto:
    """A small CNN: input [N, 3, 32, 32] -> 2x (conv3x3, relu, maxpool) -> GAP -> logits."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    prev, cin = "input", channels
    for i, cout in enumerate((16, 32)):
        w, b = f"conv{i}.weight", f"conv{i}.bias"
        inits.append(_init(rng, w, (cout, cin, 3, 3)))
        inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), b))
        nodes += [
            helper.make_node("Conv", [prev, w, b], [f"c{i}"], pads=[1, 1, 1, 1], name=f"conv{i}"),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"),
            helper.make_node(
                "MaxPool",
                [f"r{i}"],
                [f"p{i}"],
                kernel_shape=[2, 2],
                strides=[2, 2],
                name=f"pool{i}",
            ),
        ]
        prev, cin = f"p{i}", cout
    inits.append(_init(rng, "fc.weight", (cin, classes)))
    inits.append(numpy_helper.from_array(np.zeros(classes, np.float32), "fc.bias"))
    nodes += [
        helper.make_node("GlobalAveragePool", [prev], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1, name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "stowplan_convnet",
        [
            helper.make_tensor_value_info(
                "input", TensorProto.FLOAT, ["batch", channels, size, size]
            )
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        inits,
    )
    return _finish(graph)


def _finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="stowplan"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


EXAMPLES: dict[str, ExampleModel] = {
    m.name: m
    for m in (
        ExampleModel(
            "mlp",
            "mlp.onnx",
            "3-layer ReLU MLP, input [N,64] -> logits [N,10]",
            lambda seed: build_mlp(seed),
        ),
        ExampleModel(
            "convnet",
            "convnet.onnx",
            "2-block CNN, input [N,3,32,32] -> logits [N,10]",
            lambda seed: build_convnet(seed),
        ),
        ExampleModel(
            "mlp-wide",
            "mlp-wide.onnx",
            "wide 4-layer MLP, input [N,256] -> logits [N,100]",
            lambda seed: build_mlp(seed, in_features=256, hidden=1024, classes=100, layers=4),
        ),
    )
}


def build_example(name: str, directory: Path, seed: int = 0, overwrite: bool = False) -> Path:
    """Write example ``name`` into ``directory`` (created if needed); return the file path.

    An existing file is kept unless ``overwrite``; the write is atomic (temp file + rename) so a
    concurrent reader never sees half a model.
    """
    recipe = EXAMPLES[name]
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / recipe.filename
    if path.exists() and not overwrite:
        return path
    tmp = path.with_suffix(".onnx.tmp")
    tmp.write_bytes(recipe.build(seed).SerializeToString())
    tmp.replace(path)
    return path


def build_all(directory: Path, seed: int = 0, overwrite: bool = False) -> list[Path]:
    """Build every example model into ``directory``."""
    return [build_example(name, directory, seed, overwrite) for name in EXAMPLES]


def materialize(uri: str, base_dir: Path, cache_dir: Path) -> tuple[str, Path | None]:
    """Resolve a model URI for loading: return (uri to load, path built just now or None).

    Relative ``file://`` URIs (and plain relative paths) are made absolute against
    ``base_dir``; a missing file whose name is a shipped example (``mlp.onnx``, ...) is built
    into ``cache_dir/examples`` so the examples run anywhere with no downloads. Other URIs pass
    through untouched (the agent's model store fetches them or reports them missing).
    """
    parsed = urlparse(uri)
    if parsed.scheme not in ("file", ""):
        return uri, None
    raw = Path(unquote(parsed.netloc + parsed.path) if parsed.scheme else uri)
    path = raw if raw.is_absolute() else base_dir / raw
    if path.is_file():
        return str(path), None
    recipe = next((r for r in EXAMPLES.values() if r.filename == path.name), None)
    if recipe is None:
        return str(path), None
    built = cache_dir / "examples" / recipe.filename
    existed = built.is_file()
    build_example(recipe.name, built.parent)
    return str(built), None if existed else built
