"""Peak memory of this process, the survey's running memory (RM) for an engine that
runs on the CPU in it (the gateway's process, or an engine worker's)."""

from __future__ import annotations

import resource
import sys
from pathlib import Path


def peak_rss_bytes() -> int:
    """The largest resident set this process has had (weights, KV cache, buffers).

    On Linux, the high-water mark of this process's own address space (VmHWM). Not
    getrusage's ru_maxrss: Linux carries that across exec, so a worker spawned by a
    gateway holding 400 MB reported at least 400 MB whatever it held itself."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB, macOS bytes
