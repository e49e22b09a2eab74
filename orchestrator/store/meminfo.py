"""What memory the device has left: ``MemAvailable`` of ``/proc/meminfo``.

On a Jetson the GPU allocates from the same pool, so this is also what a TensorRT engine can
still take; on a discrete GPU it is the host's side only (the engine's device memory is not
counted), which the README says.
"""

from __future__ import annotations

from pathlib import Path

MEMINFO = Path("/proc/meminfo")


def mem_available(path: Path = MEMINFO) -> int | None:
    """Bytes available, or None where the kernel does not say (not Linux, or a kernel before 3.14)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name == "MemAvailable":
            fields = rest.split()
            try:
                value = int(fields[0])
            except (IndexError, ValueError):
                return None
            return value * 1024 if len(fields) > 1 and fields[1] == "kB" else value
    return None
