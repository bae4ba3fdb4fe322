"""Will it fit? A spec that asks for more memory than the machine has is refused before
anything is allocated, in one line that says what it would need and what there is
(instead of a MemoryError traceback, or minutes of swapping first)."""

from __future__ import annotations

import math
import os

from .errors import ResourceError


def available():
    """(bytes available now, bytes in total): MemAvailable and MemTotal on Linux (what
    can be allocated without swapping), else the free and total physical pages; either
    lowered to what an address-space limit (`ulimit -v`) leaves this process."""
    try:
        with open("/proc/meminfo") as f:
            fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line.split()[1:2]}
        free, total = fields["MemAvailable"], fields["MemTotal"]
    except (OSError, KeyError, ValueError, IndexError):
        page = os.sysconf("SC_PAGE_SIZE")
        free, total = os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page
    room = _address_space_left()
    if room is not None and room < free:
        return room, total
    return free, total


def _address_space_left():
    """Bytes of address space RLIMIT_AS still allows (it counts what is mapped, not what
    is resident: a `ulimit -v` run failed with a traceback after 15 s of training), or None."""
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit == resource.RLIM_INFINITY:
            return None
        with open("/proc/self/status") as f:
            size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
        return max(0, limit - size)
    except (ImportError, OSError, ValueError, StopIteration):
        return None


def human(n):
    """1536 -> '1.5 KB' (powers of 1024, as free(1) shows them)."""
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if n < 1024 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} EB"


def require(parts, what):
    """Raise ResourceError if the sum of `parts` (name -> bytes) exceeds the memory available."""
    need = sum(parts.values())
    free, total = available()
    if need <= free:
        return
    detail = ", ".join(f"{name} {human(n)}" for name, n in parts.items() if n)
    room = _address_space_left()
    where = (
        f"but the address-space limit (ulimit -v) leaves this process about {human(free)}"
        if room is not None and room <= free
        else f"but this machine has {human(free)} available ({human(total)} in total)"
    )
    raise ResourceError(f"{what} would need about {human(need)} of memory ({detail}), {where}")


def dataset_bytes(samples, input_shape, target_entries):
    """A generated dataset, at its peak: the generator's float64 temporaries, the float32
    arrays, and the training/validation split's copy. 64 bytes per entry bounds what
    tracemalloc measures for every built-in dataset (tests/test_memory.py checks it)."""
    return int(samples) * (math.prod(input_shape) + target_entries) * 64
