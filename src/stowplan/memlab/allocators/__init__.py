"""Registry of the simulated allocators, by the names the ``memsim`` CLI accepts.

Callers: :mod:`stowplan.memlab.simulate`, the CLI and tests. Adding an allocator = one module
with an :class:`~stowplan.memlab.allocators.base.Allocator` subclass + one line here.
"""

from __future__ import annotations

from stowplan.memlab.allocators.base import Allocator
from stowplan.memlab.allocators.bestfit import BestFitAllocator
from stowplan.memlab.allocators.bfc import BFCAllocator
from stowplan.memlab.allocators.buddy import BuddyAllocator
from stowplan.memlab.allocators.naive import NaiveAllocator
from stowplan.memlab.allocators.pytorch import PyTorchCachingAllocator
from stowplan.memlab.allocators.stowplan import StowplanAllocator, StowplanWarmAllocator
from stowplan.memlab.errors import UnknownAllocatorError

__all__ = [
    "ALLOCATORS",
    "CACHING_BASELINES",
    "Allocator",
    "BFCAllocator",
    "BestFitAllocator",
    "BuddyAllocator",
    "NaiveAllocator",
    "PyTorchCachingAllocator",
    "StowplanAllocator",
    "StowplanWarmAllocator",
    "UnknownAllocatorError",
    "allocator_class",
]

ALLOCATORS: dict[str, type[Allocator]] = {
    cls.name: cls
    for cls in (
        NaiveAllocator,
        BFCAllocator,
        PyTorchCachingAllocator,
        BestFitAllocator,
        BuddyAllocator,
        StowplanAllocator,
        StowplanWarmAllocator,
    )
}

#: the caching baselines stowplan's allocator is compared against
CACHING_BASELINES = ("bfc", "pytorch", "bestfit", "buddy")


def allocator_class(name: str) -> type[Allocator]:
    try:
        return ALLOCATORS[name]
    except KeyError:
        known = ", ".join(ALLOCATORS)
        raise UnknownAllocatorError(f"unknown allocator {name!r} (known: {known})") from None
