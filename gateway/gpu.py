"""GPU memory through NVML (`nvidia-ml-py`), as Prometheus gauges. Kept apart from
gateway/metrics.py, with no import but prometheus-client, so that the GPU check
script (tests/gpu/check_gpu_metrics.py) runs it on a GPU machine without the rest."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class GpuCollector(Collector):
    """GPU memory through NVML. Registered only when a GPU answers, so on a machine
    without one the series are absent rather than a misleading zero."""

    def __init__(self, nvml: Any, count: int) -> None:
        self.nvml = nvml
        self.count = count

    @classmethod
    def create(cls) -> GpuCollector | None:
        try:
            import pynvml

            pynvml.nvmlInit()
            count = int(pynvml.nvmlDeviceGetCount())
        except Exception:  # no driver, no library, no device: all mean "no GPU here"
            return None
        return cls(pynvml, count) if count else None

    def _memory(self, handle: Any) -> Any:
        # Version 2 counts the driver's reserved memory apart, so `used` is what
        # nvidia-smi shows (version 1 adds ~600 MB of reservation on an H200).
        try:
            return self.nvml.nvmlDeviceGetMemoryInfo(handle, version=self.nvml.nvmlMemory_v2)
        except (AttributeError, TypeError, self.nvml.NVMLError):
            return self.nvml.nvmlDeviceGetMemoryInfo(handle)

    def by_process(self) -> dict[int, dict[int, int]]:
        """GPU memory each process holds now, by process id, then GPU index (NVML's
        per-process accounting: an engine worker's share of a GPU). In a container
        without the host's process namespace NVML reports host process ids, which
        match no worker: the budget then keeps the estimates."""
        held: dict[int, dict[int, int]] = {}
        for i in range(self.count):
            handle = self.nvml.nvmlDeviceGetHandleByIndex(i)
            try:
                processes = self.nvml.nvmlDeviceGetComputeRunningProcesses(handle)
            except self.nvml.NVMLError:  # not supported on this device or driver
                continue
            for p in processes:
                if p.usedGpuMemory is None:  # NVML_VALUE_NOT_AVAILABLE (no permission to see it)
                    continue
                per_gpu = held.setdefault(int(p.pid), {})
                per_gpu[i] = per_gpu.get(i, 0) + int(p.usedGpuMemory)
        return held

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        used = GaugeMetricFamily("lightgate_gpu_memory_used_bytes", "GPU memory in use (NVML).", labels=["gpu", "name"])
        total = GaugeMetricFamily(
            "lightgate_gpu_memory_total_bytes", "GPU memory in all (NVML).", labels=["gpu", "name"]
        )
        for i in range(self.count):
            handle = self.nvml.nvmlDeviceGetHandleByIndex(i)
            name = self.nvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else str(name)
            info = self._memory(handle)
            used.add_metric([str(i), name], float(info.used))
            total.add_metric([str(i), name], float(info.total))
        yield from (used, total)
