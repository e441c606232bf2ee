"""``Holds``: which (model, GPU) pairs are closed, without a models x GPUs matrix.

A pair is closed when a replica of the model already runs on the GPU (one replica of a model
per GPU) or when a caller reserved the GPU (the LNS and online defragmentation keep a GPU they
are emptying closed to every model). ``PackState.holds`` used to be a dense (models, gpus) bool
matrix: 40 MB at 10,000 replicas, whose first writes (page faults) cost about 10 ms per plan and
whose copies cost 10-200 ms. This keeps the pairs per model and per GPU plus one "closed to
every model" flag per GPU, and supports the numpy indexing the callers use: ``h[mi, g]`` (read
and write), ``h[:, g] = bool`` (every model), ``h[mi]`` (a bool row over GPUs) and ``~h[mi]``.
Callers: packing (PackState), bestfit, planner, lns, online. Pure data; no I/O.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt


class Holds:
    """Closed (model, GPU) pairs; see the module docstring."""

    def __init__(self, n_models: int, n_gpus: int) -> None:
        self.n_models = n_models
        self.n_gpus = n_gpus
        self.every = np.zeros(n_gpus, dtype=bool)  # closed to every model
        self.n_every = 0  # GPUs closed to every model
        self.by_model: dict[int, set[int]] = {}  # model -> GPUs closed to it (besides every)
        self.by_gpu: dict[int, set[int]] = {}  # GPU -> models in by_model for it

    def copy(self) -> Holds:
        new = Holds(self.n_models, self.n_gpus)
        new.every, new.n_every = self.every.copy(), self.n_every
        new.by_model = {m: set(gs) for m, gs in self.by_model.items() if gs}
        new.by_gpu = {g: set(ms) for g, ms in self.by_gpu.items() if ms}
        return new

    def close(self, mi: int, g: int) -> None:
        self.by_model.setdefault(mi, set()).add(g)
        self.by_gpu.setdefault(g, set()).add(mi)

    def open(self, mi: int, g: int) -> None:
        if self.every[g]:  # closed to all: keep it closed to every other model
            self.every[g] = False
            self.n_every -= 1
            for other in range(self.n_models):
                if other != mi:
                    self.close(other, g)
        gs = self.by_model.get(mi)
        if gs is not None:
            gs.discard(g)
        ms = self.by_gpu.get(g)
        if ms is not None:
            ms.discard(mi)

    def is_closed(self, mi: int, g: int) -> bool:
        if self.every[g]:
            return True
        gs = self.by_model.get(mi)
        return gs is not None and g in gs

    def any_closed(self, mi: int) -> bool:
        """Whether any GPU at all is closed to model ``mi`` (cheap: no array work)."""
        return self.n_every > 0 or bool(self.by_model.get(mi))

    def closed(self, mi: int, gpus: npt.NDArray[np.intp]) -> npt.NDArray[np.bool_]:
        """Bool per GPU of ``gpus``: closed to model ``mi``."""
        out = self.every.take(gpus)
        gs = self.by_model.get(mi)
        if gs:
            out |= np.isin(gpus, np.fromiter(gs, dtype=np.intp, count=len(gs)))
        return out

    def row(self, mi: int) -> npt.NDArray[np.bool_]:
        """(gpus,) closed to model ``mi`` (a new array)."""
        out = self.every.copy()
        gs = self.by_model.get(mi)
        if gs:
            out[np.fromiter(gs, dtype=np.intp, count=len(gs))] = True
        return out

    def set_every(self, g: int, value: bool) -> None:
        """``h[:, g] = value``: close the GPU to every model, or open it to every model."""
        if bool(self.every[g]) != value:
            self.n_every += 1 if value else -1
        self.every[g] = value
        if not value:
            for mi in self.by_gpu.pop(g, ()):
                self.by_model[mi].discard(g)

    # numpy-style access -------------------------------------------------------------------

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, tuple):
            mi, g = key
            if isinstance(mi, slice):
                raise TypeError("Holds[:, g] can only be assigned")
            if isinstance(g, (int, np.integer)):
                return self.is_closed(int(mi), int(g))
            return self.closed(int(mi), np.asarray(g, dtype=np.intp))
        return self.row(int(key))

    def __setitem__(self, key: tuple[Any, Any], value: bool) -> None:
        mi, g = key
        if isinstance(mi, slice):
            if mi != slice(None):
                raise TypeError("Holds[:, g]: only a full slice of models")
            for one in np.atleast_1d(np.asarray(g, dtype=np.intp)).tolist():
                self.set_every(one, bool(value))
            return
        for one in np.atleast_1d(np.asarray(g, dtype=np.intp)).tolist():
            if value:
                self.close(int(mi), one)
            else:
                self.open(int(mi), one)
