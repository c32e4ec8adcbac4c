"""`diffgap-search demo --quick`: one real run, its numbers checked against brute force and its own files."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from diffgap_search.cli import app
from diffgap_search.errors import DiffgapError

runner = CliRunner()
ROWS = ("raw cosine", "translated", "translated + rerank", "calibrated fusion")
ROW = re.compile(r"^\s+(" + "|".join(re.escape(r) for r in ROWS) + r")\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)\s", re.M)


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    result = invoke("demo", "--out", out, "--quick", "--seed", 0)
    assert result.exit_code == 0, (result.output, result.stderr)
    table = {m.group(1): dict(zip(("R@1", "R@5", "R@10", "mAP@10"), map(float, m.groups()[1:]))) for m in ROW.finditer(result.stdout)}
    return {"out": out, "stdout": result.stdout, "table": table, "results": json.loads((out / "results.json").read_text())}


def unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def vectors(table, column: str) -> np.ndarray:
    return np.stack(table.column(column).to_numpy(zero_copy_only=False))


def brute_force_recall(queries: np.ndarray, gallery: np.ndarray, target_rows: np.ndarray) -> dict:
    """R@k of each query's target row by exhaustive cosine, ties counted against the query."""
    scores = unit(queries) @ unit(gallery).T  # [Q, G]
    own = scores[np.arange(len(scores)), target_rows]
    rank = (scores > own[:, None]).sum(axis=1)
    return {f"R@{k}": float((rank < k).mean()) for k in (1, 5, 10)}


def test_the_report_says_synthetic_and_has_every_row_and_the_real_data_commands(demo):
    out = demo["stdout"]
    assert "SYNTHETIC DATA" in out and "NOT how well it finds real sounds" in out
    assert set(demo["table"]) == set(ROWS)
    for command in ("embed", "build-index", "train", "calibrate", "query"):
        assert f"diffgap-search {command} " in out
    assert out.count("-> answer synthetic/clip-") == 3  # three example queries
    results = demo["results"]
    assert results["synthetic"] is True and results["test"]["queries"] == 300 and results["test"]["gallery"] == 3000
    for name, printed in demo["table"].items():  # the printed table is results.json rounded
        for key, value in printed.items():
            assert value == pytest.approx(results["test"]["methods"][name][key], abs=5e-4), (name, key)


def test_raw_recall_equals_brute_force_over_the_demo_files(demo):
    out = demo["out"]
    pairs = pq.read_table(out / "pairs.parquet")
    test = pairs.filter(pairs.column("split").to_numpy(zero_copy_only=False) == "test")
    corpus = pq.read_table(out / "corpus.parquet")
    corpus_ids = corpus.column("id").to_numpy()
    target_rows = np.searchsorted(corpus_ids, test.column("pair_id").to_numpy())
    assert (corpus_ids[target_rows] == test.column("pair_id").to_numpy()).all()  # every answer is in the corpus
    queries = pq.read_table(out / "queries.parquet")  # what the demo searched with: the test split, its own clip as target
    np.testing.assert_array_equal(queries.column("target_id").to_numpy(), test.column("pair_id").to_numpy())
    np.testing.assert_allclose(unit(vectors(queries, "embedding")), unit(vectors(test, "b")), atol=1e-6)

    want = brute_force_recall(vectors(test, "b"), vectors(corpus, "embedding"), target_rows)
    got = demo["results"]["test"]["methods"]["raw cosine"]
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    assert 0.05 < want["R@1"] < 0.5  # a real gap: neither hopeless nor solved


def test_translation_beats_raw_cosine_on_the_synthetic_gap(demo):
    table = demo["table"]
    # seeds 0-3 measured: translated R@1 0.35-0.43 against raw 0.18-0.24 (300 queries, 3000-way)
    assert table["translated"]["R@1"] >= table["raw cosine"]["R@1"] + 0.08, table
    assert table["translated"]["R@10"] > table["raw cosine"]["R@10"], table


def test_calibration_is_not_below_raw_or_translation_on_its_split(demo):
    out = demo["out"]
    fusion = json.loads((out / "model" / "calibration.json").read_text())["to-audio"]
    scores = fusion["validation"]["scores"]
    assert scores["fused"]["R@1"] >= max(scores["raw"]["R@1"], scores["translated"]["R@1"]), scores
    # the stored raw score is real: brute force over the val split (gallery = its clips)
    pairs = pq.read_table(out / "pairs.parquet")
    val = pairs.filter(pairs.column("split").to_numpy(zero_copy_only=False) == "val")
    want = brute_force_recall(vectors(val, "b"), vectors(val, "a"), np.arange(val.num_rows))
    assert scores["raw"]["R@1"] == pytest.approx(want["R@1"], abs=1e-9)
    assert fusion["validation"]["queries"] == fusion["validation"]["gallery"] == val.num_rows == 300
    # the calibrated row searched with exactly the stored settings
    s = fusion["settings"]
    weights = ", ".join(f"{name} {w:g}" for name, w in s["weights"].items())
    assert demo["results"]["test"]["methods"]["calibrated fusion"]["settings"] == f"{weights}; N={s['candidates']}, S={s['steps']}"


def test_a_rerun_replaces_the_folder_whole_or_not_at_all(demo, tmp_path, monkeypatch):
    out = tmp_path / "demo"
    shutil.copytree(demo["out"], out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))

    def failing(tmp, *args):
        (tmp / "corpus.parquet").write_text("half written")
        raise DiffgapError("stopped halfway")

    monkeypatch.setattr("diffgap_search.demo._run", failing)
    result = invoke("demo", "--out", out, "--quick")
    assert result.exit_code == 2 and result.stderr.strip() == "error: stopped halfway"
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert pq.read_table(out / "corpus.parquet").num_rows == 3000  # the previous run, untouched
    assert not list(tmp_path.glob(".demo.*"))  # no scratch folder left behind

    def finishing(tmp, *args):
        (tmp / "new.txt").write_text("a new run")
        return demo["results"]

    monkeypatch.setattr("diffgap_search.demo._run", finishing)
    result = invoke("demo", "--out", out, "--quick")
    assert result.exit_code == 0, (result.output, result.stderr)
    assert sorted(p.name for p in out.iterdir()) == ["new.txt", "results.json"]  # nothing of the old run is left
    assert not list(tmp_path.glob(".demo.*"))


def test_a_folder_the_demo_did_not_write_is_refused_untouched(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = invoke("demo", "--out", out, "--quick")
    err = result.stderr.strip()
    assert result.exit_code == 2 and err.startswith("error: ") and "\n" not in err
    assert "was not written by `diffgap-search demo`" in err and "choose another --out" in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"


def test_help_has_an_example():
    result = invoke("demo", "--help")
    assert result.exit_code == 0
    assert "Example: diffgap-search demo" in " ".join(result.output.split())
