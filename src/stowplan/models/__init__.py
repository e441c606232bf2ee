"""Example ONNX models that stowplan builds itself (no downloads): recipes and a builder.

Callers: ``stowplan models build``, ``stowplan up`` (builds missing example models on first run),
the agent tests and benchmarks. Only :mod:`stowplan.models.builders` imports ``onnx``.
"""

from stowplan.models.builders import (
    EXAMPLES,
    LEXICON,
    LEXICON_LABELS,
    ExampleModel,
    build_all,
    build_example,
    materialize,
)

__all__ = [
    "EXAMPLES",
    "LEXICON",
    "LEXICON_LABELS",
    "ExampleModel",
    "build_all",
    "build_example",
    "materialize",
]
