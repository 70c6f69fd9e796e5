"""GPU check for the metrics: on a machine with an NVIDIA GPU, the NVML collector
must find every GPU and report the memory nvidia-smi reports. Run there by
tests/gpu/run.sh (it needs only prometheus-client and nvidia-ml-py, both pure
Python, carried in .cache/gpu-deps); writes what it saw to --out."""

from __future__ import annotations

import argparse
import ctypes
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.gpu import GpuCollector

MIB = 1024 * 1024


def nvidia_smi() -> list[tuple[str, float, float]]:
    """(name, used MiB, total MiB) per GPU, as nvidia-smi reports them."""
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,memory.used,memory.total", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [line.rsplit(",", 2) for line in out.strip().splitlines()]
    return [(name.strip(), float(used), float(total)) for name, used, total in rows]


def allocate_on_gpu0(n_bytes: int) -> None:
    """Hold n_bytes of device memory (through the CUDA driver API, no framework), so
    that "used" has something to count. Freed when the process exits."""
    cuda = ctypes.CDLL("libcuda.so.1")
    device, context, pointer = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_uint64()
    for call, args in (
        ("cuInit", (0,)),
        ("cuDeviceGet", (ctypes.byref(device), 0)),
        ("cuCtxCreate_v2", (ctypes.byref(context), 0, device)),
        ("cuMemAlloc_v2", (ctypes.byref(pointer), ctypes.c_size_t(n_bytes))),
    ):
        rc = getattr(cuda, call)(*args)
        if rc != 0:
            raise RuntimeError(f"{call} failed with CUDA error {rc}")


def compare(collector: GpuCollector, out: Path, stage: str) -> tuple[list[str], list[str], float]:
    """What the collector reports against nvidia-smi: report lines, failures, GPU 0's used bytes."""
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    (out / f"gpu_metrics_{stage.replace(' ', '_')}.prom").write_text(text)
    samples = {
        (s.name, s.labels["gpu"]): (s.labels["name"], s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    smi = nvidia_smi()
    failures: list[str] = []
    report: list[str] = []
    for i, (name, used_mib, total_mib) in enumerate(smi):
        got_name, used = samples[("lightgate_gpu_memory_used_bytes", str(i))]
        _, total = samples[("lightgate_gpu_memory_total_bytes", str(i))]
        report.append(
            f"{stage}: gpu {i} {got_name}: used {used / MIB:.0f} MiB (nvidia-smi {used_mib:.0f}), "
            f"total {total / MIB:.0f} MiB (nvidia-smi {total_mib:.0f})"
        )
        if got_name != name:
            failures.append(f"gpu {i}: name {got_name!r}, nvidia-smi says {name!r}")
        if abs(total / MIB - total_mib) > 1:
            failures.append(f"gpu {i}: total {total / MIB:.0f} MiB, nvidia-smi says {total_mib:.0f}")
        if abs(used / MIB - used_mib) > 64:  # other processes may allocate between the two reads
            failures.append(f"gpu {i}: used {used / MIB:.0f} MiB, nvidia-smi says {used_mib:.0f}")
    if len(smi) != collector.count:
        failures.append(f"NVML sees {collector.count} GPUs, nvidia-smi {len(smi)}")
    return report, failures, samples[("lightgate_gpu_memory_used_bytes", "0")][1]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    out = Path(args.out)
    collector = GpuCollector.create()
    if collector is None:
        print("FAIL: NVML found no GPU")
        return 1
    report, failures, idle = compare(collector, out, "idle")
    allocate_on_gpu0(2 << 30)
    more, more_failures, busy = compare(collector, out, "holding 2 GiB")
    report += more
    failures += more_failures
    if busy - idle < 2 << 30:
        failures.append(f"used grew by {(busy - idle) / MIB:.0f} MiB after allocating 2048 MiB")
    result = "\n".join(report + [f"FAIL: {f}" for f in failures] + (["OK"] if not failures else []))
    (out / "gpu_metrics.txt").write_text(result + "\n")
    print(result)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
