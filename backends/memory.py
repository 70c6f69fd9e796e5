"""Peak memory of this process, the survey's running memory (RM) for an engine that
runs on the CPU inside the gateway's process."""

from __future__ import annotations

import resource
import sys


def peak_rss_bytes() -> int:
    """The largest resident set this process has had (weights, KV cache, buffers)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB, macOS bytes
