"""Fixtures for the allocator-lab tests: the shared TF logs (skipped if absent), parsed once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from stowplan.memlab.alloc_trace import Trace
from stowplan.memlab.data import tf_memlogs_dir
from stowplan.memlab.parser import load_trace

_CACHE: dict[str, Trace] = {}


@pytest.fixture(scope="session")
def logs_dir() -> Path:
    d = tf_memlogs_dir()
    if not d.is_dir():
        pytest.skip(f"shared TF memory logs not found in {d} (set STOWPLAN_DATA)")
    return d


@pytest.fixture(scope="session")
def parsed(logs_dir: Path) -> Callable[[str], Trace]:
    def get(name: str) -> Trace:
        if name not in _CACHE:
            _CACHE[name] = load_trace(logs_dir / name)
        return _CACHE[name]

    return get
