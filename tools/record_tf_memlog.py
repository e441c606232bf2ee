"""Record a TensorFlow ``__LOG_MEMORY__`` allocation log from a real Keras model on CPU.

NEEDS TensorFlow, which is NOT a stowplan dependency: install it in a separate virtualenv outside
the repository, e.g.::

    python3.11 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu==2.21.0
    /tmp/tfvenv/bin/python tools/record_tf_memlog.py densenet121 8 /tmp/memlogs/dn121_bs8.log.gz

then replay it with ``stowplan memsim /tmp/memlogs/dn121_bs8.log.gz``. Logs are big: keep
them outside the repository.

How: the script re-runs itself as a child process with ``TF_CPP_MIN_LOG_LEVEL=0`` and
``TF_CPP_VMODULE=log_memory=2`` (TF 2.x reads these through Abseil; the TF1-era
``TF_CPP_MIN_VLOG_LEVEL=2`` of the textbook no longer works) and stores the child's stderr,
gzipped. The child mirrors the shared logs' generator (../shared/data/tf-memlogs/README.md):
build the model eagerly (``weights=None``, so nothing is downloaded), copy every weight once
inside a ``tf.function`` (``DeepCopy`` + assign) so the weights get allocation records, make
the input in a ``tf.function``, run N inference steps of ``model(x, training=False)`` in a
``tf.function``, and write ``#### tftrace phase <name> begin|end`` markers between phases.
This is a standalone tool, not part of the stowplan package; nothing imports it.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MODELS = {
    "resnet50": "ResNet50",
    "mobilenetv2": "MobileNetV2",
    "mobilenetv3small": "MobileNetV3Small",
    "densenet121": "DenseNet121",
    "efficientnetb0": "EfficientNetB0",
    "vgg16": "VGG16",
    "inceptionv3": "InceptionV3",
    "xception": "Xception",
}
INPUT_SIDE = {"inceptionv3": 299, "xception": 299}


def mark(msg: str) -> None:
    sys.stderr.write(f"#### tftrace {msg}\n")
    sys.stderr.flush()


def child(model_name: str, batch: int, steps: int) -> None:
    import keras
    import numpy as np
    import tensorflow as tf

    mark(f"args model={model_name} batch={batch} mode=infer steps={steps}")
    mark(
        "env TF_CPP_MIN_LOG_LEVEL={} TF_CPP_VMODULE={}".format(
            os.environ.get("TF_CPP_MIN_LOG_LEVEL"), os.environ.get("TF_CPP_VMODULE")
        )
    )
    mark(
        f"versions python={sys.version.split()[0]} tensorflow={tf.__version__} "
        f"keras={keras.__version__} numpy={np.__version__}"
    )
    side = INPUT_SIDE.get(model_name, 224)
    mark("phase build_model begin")
    t0 = time.monotonic()
    keras.utils.set_random_seed(1234)
    ctor: Any = getattr(keras.applications, MODELS[model_name])
    model = ctor(weights=None, input_shape=(side, side, 3), classes=1000)
    mark(
        f"phase build_model end params={model.count_params()} weights={len(model.weights)} "
        f"seconds={time.monotonic() - t0:.1f}"
    )
    state_vars = [v.value if hasattr(v, "value") else v for v in model.weights]
    mark(f"phase rematerialise_weights begin variables={len(state_vars)}")

    @tf.function
    def rematerialise() -> Any:
        for v in state_vars:
            v.assign(tf.raw_ops.DeepCopy(x=v.read_value()))
        return tf.constant(0)

    rematerialise()
    mark("phase rematerialise_weights end")
    mark("phase make_input begin")

    @tf.function
    def make_input() -> Any:
        return tf.random.uniform((batch, side, side, 3), dtype=tf.float32)

    x = make_input()
    mark(f"phase make_input end shape={tuple(x.shape)} dtype=float32")

    @tf.function
    def infer_step(x: Any) -> Any:
        return model(x, training=False)

    out = None
    for i in range(1, steps + 1):
        note = " (first call: includes tracing and kernel construction)" if i == 1 else ""
        mark(f"phase step {i} begin{note}")
        t0 = time.monotonic()
        out = infer_step(x)
        mark(f"phase step {i} end seconds={time.monotonic() - t0:.2f} out_shape={tuple(out.shape)}")
    mark("phase teardown begin")
    del out, x
    mark("phase teardown end (process exits after this line)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", choices=sorted(MODELS))
    ap.add_argument("batch", type=int)
    ap.add_argument("out", type=Path, help="output .log.gz (outside the repository)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.model, args.batch, args.steps)
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0", TF_CPP_VMODULE="log_memory=2")
    raw = args.out.with_suffix("") if args.out.suffix == ".gz" else args.out
    cmd = [
        sys.executable,
        "-u",
        __file__,
        args.model,
        str(args.batch),
        str(raw),
        "--child",
        "--steps",
        str(args.steps),
    ]
    with raw.open("wb") as log:
        rc = subprocess.run(cmd, env=env, stderr=log, stdout=subprocess.DEVNULL, check=False)
    if rc.returncode != 0:
        sys.exit(f"recording failed (exit {rc.returncode}); see {raw}")
    if args.out.suffix == ".gz":
        with raw.open("rb") as src, gzip.GzipFile(args.out, "wb", compresslevel=9, mtime=0) as dst:
            shutil.copyfileobj(src, dst)
        raw.unlink()
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
