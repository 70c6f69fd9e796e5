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


# What a process holds on a GPU before any model: the CUDA context and the kernels of
# the libraries it loads (a few hundred MiB on a Hopper GPU). An allowance, not a
# measurement: a model's first run measures its GPU memory by its process (NVML).
CUDA_CONTEXT_BYTES = 512 * 2**20


def gpu_count() -> int:
    """The GPUs NVML sees (0 without a driver, its library or a device). The gateway's
    GpuCollector asks NVML the same way for itself: gateway/gpu.py imports nothing of
    the project, so the GPU check script runs it with prometheus-client alone."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return int(pynvml.nvmlDeviceGetCount())
    except Exception:  # no driver, no library, no device: all mean "no GPU here"
        return 0


def cuda_index(device: str) -> int | None:
    """The GPU a torch device string names (`cuda`, `cuda:1`); None for the CPU."""
    if not device.startswith("cuda"):
        return None
    _, _, index = device.partition(":")
    return int(index) if index else 0
