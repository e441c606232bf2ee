"""Where the shared TensorFlow memory logs live: ``tf-memlogs`` in the shared data folder
(found by :mod:`stowplan.shareddata`). Callers: tests, docs commands.
Data is never copied into the repository."""

from __future__ import annotations

from pathlib import Path

from stowplan import shareddata

SHIPPED_LOGS = (
    "resnet50_infer_bs1.log.gz",
    "resnet50_infer_bs32.log.gz",
    "mobilenetv2_infer_bs8.log.gz",
    "bert_base_infer_bs8.log.gz",
    "format_sample_session_matmul.log.gz",
)


def tf_memlogs_dir() -> Path:
    return shareddata.data_root() / "tf-memlogs"
