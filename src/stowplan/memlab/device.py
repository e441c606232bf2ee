"""The simulated GPU: ``cudaMalloc``/``cudaFree`` with a configurable cost model.

Allocators obtain memory from a :class:`SimDevice` and return it; the device counts calls,
reserved bytes (current and peak) and the simulated time those calls cost. Reserved bytes are
the sizes passed to ``malloc`` (no hidden page rounding), so the naive allocator, which forwards
every request, reserves exactly the live requested bytes: the space lower bound.

Cost-model defaults come from ``../shared/reference/allocator-anchors.md`` section 4.3 (an
[assumption] table to be calibrated on a GPU): cudaMalloc = 50 us + 2 us per 2 MiB page,
cudaFree = 20 us + 1 us per page + a device-drain stall (cudaFree synchronises the device), a
caching allocator's own malloc/free = 1 us / 0.5 us. Virtual memory (what PyTorch's expandable
segments use): ``reserve_address_space`` costs cuMemAddressReserve (19 us, no memory) and
``map`` backs part of it with one physical handle, a device allocation counted with the
cudaMalloc calls, at 230 us (cuMemCreate 193 + cuMemMap 1.5 + cuMemSetAccess 36, A100, anchors
4.2) + 2 us per page [assumption: per-page term unmeasured]. Callers: every allocator module and
:mod:`stowplan.memlab.simulate`. Must not know about traces or allocator policies.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from stowplan.memlab.errors import DeviceOutOfMemoryError, InvalidFreeError

DEVICE_ALIGNMENT = 512  # cudaMalloc returns 256-byte aligned pointers; we keep a little margin
DEVICE_GAP = 2 << 20  # unmapped hole between two device ranges


class CostModel(BaseModel):
    """Latency parameters of the simulated device and of allocator bookkeeping (microseconds)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    malloc_base_us: float = Field(50.0, ge=0, description="cudaMalloc fixed cost")
    malloc_per_page_us: float = Field(2.0, ge=0, description="cudaMalloc cost per 2 MiB page")
    free_base_us: float = Field(20.0, ge=0, description="cudaFree fixed cost")
    free_per_page_us: float = Field(1.0, ge=0, description="cudaFree cost per 2 MiB page")
    free_sync_us: float = Field(
        0.0, ge=0, description="device drain stall per cudaFree (queued GPU work; 0 offline)"
    )
    map_base_us: float = Field(
        230.0, ge=0, description="cuMemCreate + cuMemMap + cuMemSetAccess of one physical handle"
    )
    map_per_page_us: float = Field(2.0, ge=0, description="mapping cost per 2 MiB page")
    va_reserve_us: float = Field(19.0, ge=0, description="cuMemAddressReserve (no memory)")
    hit_malloc_us: float = Field(1.0, ge=0, description="caching allocator malloc served")
    hit_free_us: float = Field(0.5, ge=0, description="caching allocator free (merge+reinsert)")
    page_bytes: int = Field(2 << 20, gt=0)

    def malloc_us(self, size_bytes: int) -> float:
        pages = -(-size_bytes // self.page_bytes)
        return self.malloc_base_us + self.malloc_per_page_us * pages

    def map_us(self, size_bytes: int) -> float:
        pages = -(-size_bytes // self.page_bytes)
        return self.map_base_us + self.map_per_page_us * pages

    def free_us(self, size_bytes: int) -> float:
        pages = -(-size_bytes // self.page_bytes)
        return self.free_base_us + self.free_per_page_us * pages + self.free_sync_us


class SimDevice:
    """A device address space with cudaMalloc/cudaFree accounting.

    Addresses: a bump pointer, with exact-size reuse of freed ranges (the CUDA driver tends to hand
    a just-freed range back for the same size). ``capacity_bytes`` (0 = unlimited) makes ``malloc``
    raise :class:`DeviceOutOfMemoryError`, which allocators may catch to release cached memory.
    """

    def __init__(self, cost: CostModel | None = None, capacity_bytes: int = 0) -> None:
        self.cost = cost or CostModel()
        self.capacity_bytes = capacity_bytes
        self.reserved_bytes = 0
        self.peak_reserved_bytes = 0
        self.malloc_calls = 0
        self.free_calls = 0
        self.map_calls = 0  # physical handles mapped into reserved ranges (in malloc_calls too)
        self.time_us = 0.0
        self._next_addr = 1 << 40
        self._sizes: dict[int, int] = {}
        self._freed: dict[int, list[int]] = {}
        # (event counter value, reserved bytes) after every device call, for plots
        self.timeline: list[tuple[int, int]] = []
        self.clock = 0  # set by the simulator to the current event index

    def malloc(self, size_bytes: int) -> int:
        if size_bytes <= 0:
            raise ValueError("cudaMalloc of a non-positive size")
        if self.capacity_bytes and self.reserved_bytes + size_bytes > self.capacity_bytes:
            raise DeviceOutOfMemoryError(
                f"simulated device full: {self.reserved_bytes} + {size_bytes} bytes"
            )
        pool = self._freed.get(size_bytes)
        if pool:
            addr = pool.pop()
        else:
            addr = self._next_addr
            # a gap after every range: two segments are never adjacent, so no allocator can
            # coalesce blocks across cudaMalloc boundaries by accident
            self._next_addr += -(-size_bytes // DEVICE_ALIGNMENT) * DEVICE_ALIGNMENT + DEVICE_GAP
        self._sizes[addr] = size_bytes
        self.malloc_calls += 1
        self.time_us += self.cost.malloc_us(size_bytes)
        self.reserved_bytes += size_bytes
        if self.reserved_bytes > self.peak_reserved_bytes:
            self.peak_reserved_bytes = self.reserved_bytes
        self.timeline.append((self.clock, self.reserved_bytes))
        return addr

    def free(self, addr: int) -> None:
        size = self._sizes.pop(addr, None)
        if size is None:
            raise InvalidFreeError(f"cudaFree of unknown address {addr:#x}")
        self._freed.setdefault(size, []).append(addr)
        self.free_calls += 1
        self.time_us += self.cost.free_us(size)
        self.reserved_bytes -= size
        self.timeline.append((self.clock, self.reserved_bytes))

    def reserve_address_space(self, size_bytes: int) -> int:
        """cuMemAddressReserve: a virtual range with no memory behind it (not reserved bytes)."""
        addr = self._next_addr
        self._next_addr += -(-size_bytes // DEVICE_ALIGNMENT) * DEVICE_ALIGNMENT + DEVICE_GAP
        self.time_us += self.cost.va_reserve_us
        return addr

    def map(self, size_bytes: int) -> None:
        """Back ``size_bytes`` more of a reserved range with one physical handle (cuMemCreate +
        cuMemMap + cuMemSetAccess): a device allocation, counted with the cudaMalloc calls."""
        if size_bytes <= 0 or size_bytes % self.cost.page_bytes:
            raise ValueError("map a positive multiple of the page size")
        if self.capacity_bytes and self.reserved_bytes + size_bytes > self.capacity_bytes:
            raise DeviceOutOfMemoryError(
                f"simulated device full: {self.reserved_bytes} + {size_bytes} bytes"
            )
        self.malloc_calls += 1
        self.map_calls += 1
        self.time_us += self.cost.map_us(size_bytes)
        self.reserved_bytes += size_bytes
        if self.reserved_bytes > self.peak_reserved_bytes:
            self.peak_reserved_bytes = self.reserved_bytes
        self.timeline.append((self.clock, self.reserved_bytes))

    def segment_size(self, addr: int) -> int:
        return self._sizes[addr]
