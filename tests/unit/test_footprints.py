"""Measured footprints kept on disk, GPU budgets read as people write them, and the
per-process GPU memory read from NVML (`FakeNvml` stands in for it: no GPU here)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gateway.footprints import Footprint, FootprintStore
from gateway.gpu import GpuCollector
from gateway.residency import gpu_budget_bytes
from tests.fake_nvml import FakeNvml, Process

MiB = 2**20


def test_a_kept_footprint_is_read_back_under_its_key_only(tmp_path: Path) -> None:
    path = tmp_path / "state" / "footprints.json"  # its folder is made when first written
    FootprintStore(path).put("key-a", "a", Footprint(300 * MiB, {0: 2048 * MiB, 1: 10 * MiB}))
    store = FootprintStore(path)  # a new gateway
    assert store.get("key-a") == Footprint(300 * MiB, {0: 2048 * MiB, 1: 10 * MiB})
    assert store.get("key-b") is None and store.get(None) is None
    store.put("key-a", "a", Footprint(250 * MiB))  # a later run took less: that is what is kept
    assert FootprintStore(path).get("key-a") == Footprint(250 * MiB)
    assert not list(path.parent.glob("*.tmp"))  # written whole, then renamed


def test_an_unreadable_file_leaves_the_estimates_and_is_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "footprints.json"
    path.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="lightgate"):
        store = FootprintStore(path)
    assert store.get("key-a") is None and "not read" in caplog.text
    store.put("key-a", "a", Footprint(1))
    assert FootprintStore(path).get("key-a") == Footprint(1)


def test_the_larger_of_two_footprints_is_taken_part_by_part() -> None:
    a, b = Footprint(5, {0: 1}), Footprint(3, {0: 4, 1: 2})
    assert a.most(b) == b.most(a) == Footprint(5, {0: 4, 1: 2})


def test_a_gpu_budget_is_one_size_for_every_gpu_or_sizes_by_index() -> None:
    assert gpu_budget_bytes(None, 2) == {}
    assert gpu_budget_bytes("40GiB", 2) == {0: 40 * 2**30, 1: 40 * 2**30}
    assert gpu_budget_bytes("40GiB", 0) == {}  # no GPU: nothing to bound
    assert gpu_budget_bytes({1: "10Gi", 0: 2**30}, 2) == {0: 2**30, 1: 10 * 2**30}
    with pytest.raises(ValueError, match="not a size"):
        gpu_budget_bytes({0: "lots"}, 1)


def test_gpu_memory_is_read_per_process_and_per_gpu() -> None:
    nvml = FakeNvml(
        {
            0: [Process(101, 700 * MiB), Process(102, 90 * MiB), Process(103, None)],
            1: [Process(101, 300 * MiB)],
            2: None,
        }
    )
    held = GpuCollector(nvml, 3).by_process()
    # A worker spread over two GPUs; one NVML may not show (no permission); a GPU that
    # cannot say is skipped.
    assert held == {101: {0: 700 * MiB, 1: 300 * MiB}, 102: {0: 90 * MiB}}


def test_an_entry_edited_into_another_shape_is_no_footprint(tmp_path: Path) -> None:
    path = tmp_path / "footprints.json"
    path.write_text('{"a": {"host": "lots"}, "b": ["x"], "c": {"gpu": {"0": 1}}, "d": {"host": 5, "gpu": {"0": 7}}}')
    store = FootprintStore(path)
    assert store.get("a") is None and store.get("b") is None and store.get("c") is None
    assert store.get("d") == Footprint(5, {0: 7})
