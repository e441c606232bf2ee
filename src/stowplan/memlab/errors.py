"""The one exception tree of :mod:`stowplan.memlab`.

Callers catch :class:`MemlabError` at the CLI boundary and print its message; nothing in the lab
raises bare ``ValueError``/``KeyError`` for bad input. Malformed *records* inside a log are not
errors (they are counted and reported by the parser); a file that cannot be read at all is.
"""

from __future__ import annotations


class MemlabError(Exception):
    """Base class of every error raised by the allocator lab."""


class TraceFileError(MemlabError):
    """A trace file is missing, unreadable, or not in a format the lab understands."""

    def __init__(self, path: str, message: str, line_no: int | None = None) -> None:
        where = f"{path}:{line_no}" if line_no is not None else path
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line_no = line_no


class UnknownAllocatorError(MemlabError):
    """An allocator name that is not in the registry."""


class InvalidFreeError(MemlabError):
    """An allocator was asked to free an address it never handed out (a replay bug)."""


class DeviceOutOfMemoryError(MemlabError):
    """The simulated device has a capacity and a request would exceed it."""
