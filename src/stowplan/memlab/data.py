"""Where the shared TensorFlow memory logs live: ``$STOWPLAN_DATA/tf-memlogs`` or, by default,
``../shared/data/tf-memlogs`` relative to the repository root. Callers: tests, docs commands.
Data is never copied into the repository."""

from __future__ import annotations

import os
from pathlib import Path

SHIPPED_LOGS = (
    "resnet50_infer_bs1.log.gz",
    "resnet50_infer_bs32.log.gz",
    "mobilenetv2_infer_bs8.log.gz",
    "bert_base_infer_bs8.log.gz",
    "format_sample_session_matmul.log.gz",
)


def tf_memlogs_dir() -> Path:
    env = os.environ.get("STOWPLAN_DATA")
    base = Path(env) if env else Path(__file__).resolve().parents[3].parent / "shared" / "data"
    return base / "tf-memlogs"
