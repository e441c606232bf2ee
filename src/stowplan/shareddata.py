"""The one place that finds the shared public data folder (never copied into the repository).

The folder is ``$STOWPLAN_DATA`` when that is set, else ``../shared/data`` beside the checkout
(the repository root's parent), else ``../shared/data`` relative to the working directory (an
installed, non-editable copy has no checkout to stand beside). Callers: the allocator lab
(:mod:`stowplan.memlab.data`), the agent benchmarks (:mod:`stowplan.agentbench.data`), the
benchmark commands and their tests. It reads the environment only when asked, and opens nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["ENV_VAR", "DataMissing", "data_path", "data_root"]

#: The environment variable naming the shared data folder.
ENV_VAR = "STOWPLAN_DATA"

# src/stowplan/shareddata.py -> parents[2] is the repository root
_CHECKOUT_DEFAULT = Path(__file__).resolve().parents[2].parent / "shared" / "data"


class DataMissing(FileNotFoundError):
    """A file of the shared data folder is not there; the message names the path looked at."""


def data_root(environ: Mapping[str, str] | None = None) -> Path:
    """The shared data folder (it may not exist: :func:`data_path` checks)."""
    env = (os.environ if environ is None else environ).get(ENV_VAR)
    if env:
        return Path(env)
    if _CHECKOUT_DEFAULT.is_dir():
        return _CHECKOUT_DEFAULT
    return Path.cwd().parent / "shared" / "data"


def data_path(relative: str, environ: Mapping[str, str] | None = None) -> Path:
    """``relative`` inside the shared data folder; :class:`DataMissing` if it is not there."""
    path = data_root(environ) / relative
    if not path.exists():
        raise DataMissing(f"{path} not found (set {ENV_VAR} to the shared data folder)")
    return path
