"""The NVML collector's own logic, with a fake NVML module standing in for the
driver library (absent on this machine). The real thing is checked on a GPU
machine by tests/gpu/check_gpu_metrics.py against nvidia-smi."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.gpu import GpuCollector


class FakeNvml:
    """Two GPUs; `v2` False plays an old driver whose bindings lack memory info v2."""

    class NVMLError(Exception):
        pass

    nvmlMemory_v2 = 2

    def __init__(self, v2: bool) -> None:
        self.v2 = v2

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetName(self, handle: int) -> Any:
        return b"Fake A" if handle == 0 else "Fake B"  # old bindings return bytes

    def nvmlDeviceGetMemoryInfo(self, handle: int, version: int | None = None) -> SimpleNamespace:
        if version is not None and not self.v2:
            raise self.NVMLError("version not supported")
        reserved = 0 if version else 600 << 20  # v1 counts the driver's reservation as used
        return SimpleNamespace(used=(handle + 1) * (1 << 30) + reserved, total=80 << 30)


def _samples(nvml: FakeNvml) -> dict[tuple[str, str, str], float]:
    registry = CollectorRegistry()
    registry.register(GpuCollector(nvml, 2))
    text = generate_latest(registry).decode()
    return {
        (s.name, s.labels["gpu"], s.labels["name"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_reports_used_and_total_per_gpu_with_names() -> None:
    got = _samples(FakeNvml(v2=True))
    assert got == {
        ("lightgate_gpu_memory_used_bytes", "0", "Fake A"): 1 << 30,
        ("lightgate_gpu_memory_used_bytes", "1", "Fake B"): 2 << 30,
        ("lightgate_gpu_memory_total_bytes", "0", "Fake A"): 80 << 30,
        ("lightgate_gpu_memory_total_bytes", "1", "Fake B"): 80 << 30,
    }


def test_falls_back_to_memory_info_v1() -> None:
    got = _samples(FakeNvml(v2=False))
    assert got[("lightgate_gpu_memory_used_bytes", "0", "Fake A")] == (1 << 30) + (600 << 20)
