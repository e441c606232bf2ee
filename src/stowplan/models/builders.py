"""Real ONNX graphs built with ``onnx.helper``: a small MLP classifier, a small conv net, and a
string model (``lexicon``).

Weights are drawn from a seeded numpy generator, so the same recipe always yields the same
bytes. The numeric models have one float32 input named ``input`` with a dynamic batch dimension
and one float32 output named ``logits``; ``lexicon`` takes a string tensor (the protocol's BYTES)
``text`` [N, 1] and answers ``class_id`` (INT64) and ``label`` (BYTES), both [N, 1].
Callers: :mod:`stowplan.models` users (CLI, standalone mode, tests, benchmarks). This module
must not download anything or import onnxruntime.
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
ML_OPSET = 2  # ai.onnx.ml: LabelEncoder with int64 keys and string values
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


#: lexicon's vocabulary: word -> class id (words in four languages, and the empty string)
LEXICON: dict[str, int] = {
    **dict.fromkeys(("cat", "chat", "gato", "Katze", "猫"), 0),
    **dict.fromkeys(("dog", "chien", "perro", "Hund", "犬"), 1),
    **dict.fromkeys(("bird", "oiseau", "pájaro", "Vogel", "鳥"), 2),
    "": 3,
}
#: lexicon's class id -> label (non-ASCII on purpose; an unknown word, class -1, gets "")
LEXICON_LABELS: dict[int, str] = {0: "cat 🐈", 1: "dog 🐕", 2: "bird 🐦", 3: "(empty)"}


def build_lexicon(seed: int = 0) -> onnx.ModelProto:
    """A string model: ``text`` [N, 1] (tensor(string)) -> ``class_id`` [N, 1] (int64, -1 for a
    word not in :data:`LEXICON`) and ``label`` [N, 1] (tensor(string), "" for an unknown word).

    Two ``ai.onnx.ml`` LabelEncoders (word -> id, id -> label): exact, case-sensitive lookups.
    Not StringNormalizer: its lowercasing needs a locale (en_US.UTF-8 by default) that slim
    container images lack, and ONNX Runtime then fails to load the model. Rows are independent,
    so requests batch along N. ``seed`` is unused (no weights); it keeps the recipe signature.
    """
    del seed
    words = list(LEXICON)
    ids = sorted(LEXICON_LABELS)
    nodes = [
        helper.make_node(
            "LabelEncoder",
            ["text"],
            ["class_id"],
            domain="ai.onnx.ml",
            keys_strings=words,
            values_int64s=[LEXICON[w] for w in words],
            default_int64=-1,
            name="classify",
        ),
        helper.make_node(
            "LabelEncoder",
            ["class_id"],
            ["label"],
            domain="ai.onnx.ml",
            keys_int64s=ids,
            values_strings=[LEXICON_LABELS[i] for i in ids],
            default_string="",
            name="name",
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "stowplan_lexicon",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch", 1])],
        [
            helper.make_tensor_value_info("class_id", TensorProto.INT64, ["batch", 1]),
            helper.make_tensor_value_info("label", TensorProto.STRING, ["batch", 1]),
        ],
    )
    return _finish(graph, ml=True)


def _finish(graph: onnx.GraphProto, ml: bool = False) -> onnx.ModelProto:
    opsets = [helper.make_opsetid("", OPSET)]
    if ml:
        opsets.append(helper.make_opsetid("ai.onnx.ml", ML_OPSET))
    model = helper.make_model(graph, opset_imports=opsets, producer_name="stowplan")
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
        ExampleModel(
            "lexicon",
            "lexicon.onnx",
            "string lookup, text [N,1] BYTES -> class_id [N,1] INT64, label [N,1] BYTES",
            build_lexicon,
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
