"""One writer at a time: concurrent adds are all applied, a held lock makes a writer wait or refuse clearly."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa

from conftest import REPO, unit_rows
from diffgap_search.index import Index
from diffgap_search.locks import writer_lock
from diffgap_search.storage import write_shard


def cli(*args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "diffgap_search.cli", *map(str, args)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def shard(path, n, seed, tag):
    write_shard(path, np.arange(n), unit_rows(n, 64, seed=seed), pa.table({"path": [f"{tag}{i}" for i in range(n)]}), local_ids=True)
    return path


def test_concurrent_adds_are_all_applied(tmp_path):
    Index.build(unit_rows(20_000, 64, seed=1), out=tmp_path / "ix", index_type="flat", device="cpu")
    a, b = shard(tmp_path / "a.parquet", 30_000, 2, "a"), shard(tmp_path / "b.parquet", 25_000, 3, "b")
    runs = [cli("add", tmp_path / "ix", "--embeddings", src) for src in (a, b)]
    outs = [r.communicate(timeout=300) for r in runs]
    assert [r.returncode for r in runs] == [0, 0], outs
    assert "added 30000 vectors" in outs[0][0] and "added 25000 vectors" in outs[1][0]
    index = Index.open(tmp_path / "ix", device="cpu")
    assert len(index) == 75_000
    np.testing.assert_array_equal(np.sort(index.ids), np.arange(75_000))
    paths = {row["path"] for row in index.metadata(range(20_000, 75_000))}
    assert len(paths) == 55_000  # every added row once


def test_a_held_lock_makes_a_writer_wait_or_refuse_naming_the_holder(tmp_path):
    Index.build(unit_rows(100, 64, seed=1), out=tmp_path / "ix", index_type="flat", device="cpu")
    more = shard(tmp_path / "m.parquet", 10, 4, "m")
    with writer_lock(tmp_path / "ix"):
        refused = cli("add", tmp_path / "ix", "--embeddings", more, "--wait", "0.5")
        out, err = refused.communicate(timeout=120)
        assert refused.returncode == 2 and err.strip().splitlines()[-1].startswith("error: ")
        assert f"PID {os.getpid()}" in err and "--wait" in err and "Traceback" not in err
        assert len(Index.open(tmp_path / "ix", device="cpu")) == 100  # nothing changed
        waiting = cli("add", tmp_path / "ix", "--embeddings", more, "--wait", "60")
        time.sleep(2.0)
        assert waiting.poll() is None  # still waiting for the lock
    out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0 and "waiting for" in err and "110 in all" in out


def test_a_reader_keeps_its_version_while_a_writer_swaps_in_another(tmp_path):
    """The first wave read candidate vectors lazily by path: after a rebuild it scored the old version's
    candidates with the new version's vectors. An open Index now reads only the version it opened."""
    from diffgap_search import Engine

    old, new = unit_rows(300, 16, seed=7), unit_rows(400, 16, seed=8)
    Index.build(old, out=tmp_path / "ix", index_type="flat", device="cpu")
    reader = Index.open(tmp_path / "ix", device="cpu")  # vectors not read yet
    Index.build(new, out=tmp_path / "ix", index_type="flat", device="cpu")  # a writer swaps in a new version
    np.testing.assert_array_equal(reader.vectors(), old)
    q = unit_rows(5, 16, seed=9)
    hits = Engine(reader).search(embeddings=q, k=3)
    np.testing.assert_allclose(hits.scores, np.sort(q @ old.T, axis=1)[:, ::-1][:, :3], rtol=1e-5)
    np.testing.assert_allclose(hits.signals["raw"], hits.scores, rtol=1e-6)  # the scores come from the same version
    assert len(Index.open(tmp_path / "ix", device="cpu")) == 400  # a new reader sees the new version
