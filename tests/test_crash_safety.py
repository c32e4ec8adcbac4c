"""A build or add killed at any point leaves the previous index intact and loadable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from diffgap_search.atomic import restore_interrupted_swap as _restore_interrupted_swap
from diffgap_search.index import EmbeddingIndex
from diffgap_search.storage import write_shard

from conftest import unit_rows


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "diffgap_search.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    return False


def _snapshot(root: Path, xq: np.ndarray):
    index = EmbeddingIndex.load(root, device="cpu")
    result = index.search(xq, 5)
    return len(index), result.ids.copy(), result.scores.copy()


@pytest.fixture
def old_and_new(tmp_path):
    """An existing small index, and a big input whose build takes a few seconds."""
    old = tmp_path / "old.parquet"
    write_shard(old, np.arange(500), unit_rows(500, 64, seed=1))
    root = tmp_path / "ix"
    EmbeddingIndex.build([old], root, index_type="flat")
    big = tmp_path / "big.parquet"
    write_shard(big, np.arange(1_000, 81_000), unit_rows(80_000, 64, seed=2))
    return root, big


# (what to wait for in the scratch folder before the kill, extra delay)
KILL_POINTS = [
    ("scratch folder created", lambda tmp: tmp.exists(), 0.0),
    ("first shard written", lambda tmp: any((tmp / "shards").glob("part-*.parquet")), 0.0),
    ("graph half built", lambda tmp: any((tmp / "shards").glob("part-*.parquet")), 1.0),
    ("index file being written", lambda tmp: (tmp / "index.faiss").exists(), 0.0),
]


@pytest.mark.slow
@pytest.mark.parametrize("what, ready, delay", KILL_POINTS, ids=[k[0] for k in KILL_POINTS])
def test_killed_build_leaves_previous_index(old_and_new, what, ready, delay):
    root, big = old_and_new
    xq = unit_rows(4, 64, seed=3)
    before = _snapshot(root, xq)
    proc = _start(["build-index", "--embeddings", str(big), "--out", str(root), "--index-type", "hnsw"])
    scratch = root.parent / f".{root.name}.building-{proc.pid}"
    reached = _wait_for(lambda: ready(scratch), proc)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if not reached:
        pytest.fail(f"the build ended before '{what}' could be observed (exit {proc.returncode})")
    count, ids, scores = _snapshot(root, xq)
    if count == 80_000:  # the kill landed after the atomic swap: then the new index must be whole
        assert (ids >= 0).all()
    else:
        assert count == before[0]
        np.testing.assert_array_equal(ids, before[1])
        np.testing.assert_array_equal(scores, before[2])
    # the next write cleans the dead process's scratch folder
    EmbeddingIndex.build([big], root.parent / "other", index_type="flat")
    EmbeddingIndex.build([root / "shards"], root, index_type="flat")
    assert not scratch.exists()


@pytest.mark.slow
def test_killed_add_leaves_previous_index(old_and_new):
    root, big = old_and_new
    EmbeddingIndex.build([root / "shards"], root, index_type="hnsw")  # adding to a graph takes seconds
    xq = unit_rows(4, 64, seed=3)
    before = _snapshot(root, xq)
    proc = _start(["add", str(root), "--embeddings", str(big)])
    scratch = root.parent / f".{root.name}.building-{proc.pid}"
    assert _wait_for(lambda: any((scratch / "shards").glob("part-00001.parquet")), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    count, ids, scores = _snapshot(root, xq)
    assert count == before[0]
    np.testing.assert_array_equal(ids, before[1])
    np.testing.assert_array_equal(scores, before[2])


def test_interrupted_two_rename_swap_is_restored(shard, tmp_path):
    """Where renameat2 is missing, a crash between the two renames leaves `.NAME.old-PID`."""
    path, _ = shard
    root = tmp_path / "ix"
    EmbeddingIndex.build([path], root, index_type="flat")
    os.rename(root, tmp_path / ".ix.old-12345")
    _restore_interrupted_swap(root)
    assert len(EmbeddingIndex.load(root)) == 200
