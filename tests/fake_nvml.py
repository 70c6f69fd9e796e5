"""A stand-in for the `pynvml` module where no GPU is (these machines have none): the
calls and the struct fields of the real one that gateway/gpu.py reads for each
process. tests/gpu/check_worker_gpu_memory.py makes the same reading on a real GPU."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Process:  # pynvml's c_nvmlProcessInfo_v3_t as nvmlStructToFriendlyObject gives it
    pid: int
    usedGpuMemory: int | None  # NVML's field name


class FakeNvml:
    """Stands in for the `pynvml` module: devices, and the processes on each."""

    class NVMLError(Exception):
        pass

    def __init__(self, processes: dict[int, list[Process] | None]) -> None:
        self.processes = processes  # by GPU index; None: the call is not supported there

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:  # NVML's names
        return i

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[Process]:
        found = self.processes[handle]
        if found is None:
            raise self.NVMLError("Not Supported")
        return found
