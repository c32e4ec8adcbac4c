"""The laion_clap protocol against a brute-force reference; the MLP mappers; `diffgap-search benchmark` end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from diffgap_search.baselines import MLPConfig, MLPMapper, fit_mlp, fit_ridge
from diffgap_search.cli import app
from diffgap_search.metrics import (
    audio_to_text_ranks,
    recall_at,
    retrieval_metrics,
    target_ranks,
    text_to_audio_ranks,
)
from diffgap_search.pairs import read_pairs, split_train_val, write_pairs

from conftest import REPO, unit_rows

runner = CliRunner()


# ---------------------------------------------------------------------------
# metrics: brute force over sorted scores
# ---------------------------------------------------------------------------


def brute_best_rank(scores_row, positives):
    """Sort the items by score, positives after the non-positives they tie with; the first positive's position."""
    order = sorted(range(len(scores_row)), key=lambda g: (-scores_row[g], g in positives))
    return next(i for i, g in enumerate(order) if g in positives)


def brute_metrics(ranks):
    n = len(ranks)
    out = {f"R@{k}": sum(1 for r in ranks if r < k) / n for k in (1, 5, 10)}
    out["mAP@10"] = sum(1 / (r + 1) for r in ranks if r < 10) / n
    return out


def five_caption_data(seed=0, clips=12, captions=5, d=6, levels=3):
    """Scores on a coarse grid (many exact ties), 5 captions per clip."""
    rng = np.random.default_rng(seed)
    group = np.repeat(np.arange(clips), captions)
    scores = rng.integers(0, levels, size=(clips * captions, clips)).astype(np.float32)  # [Q, G], ties everywhere
    return scores, group


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_text_to_audio_matches_brute_force_with_ties(seed):
    scores, group = five_caption_data(seed)
    ranks = text_to_audio_ranks(scores, group)
    expected = [brute_best_rank(scores[q].tolist(), [group[q]]) for q in range(len(group))]
    assert ranks.tolist() == expected
    assert len(ranks) == 60  # every caption is a query: N = 5 x clips
    m, ref = recall_at(ranks), brute_metrics(expected)
    for key in ref:
        assert m[key] == pytest.approx(ref[key])
    assert m["N"] == 60 and m["median rank"] == float(np.median(expected)) + 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_audio_to_text_takes_the_best_caption_brute_force_with_ties(seed):
    scores, group = five_caption_data(seed)
    a2t = np.ascontiguousarray(scores.T)  # [G, Q]
    ranks = audio_to_text_ranks(a2t, group)
    expected = [brute_best_rank(a2t[i].tolist(), np.flatnonzero(group == i).tolist()) for i in range(a2t.shape[0])]
    assert ranks.tolist() == expected
    assert len(ranks) == 12  # every clip is a query once
    m, ref = recall_at(ranks), brute_metrics(expected)
    for key in ref:
        assert m[key] == pytest.approx(ref[key])


def test_five_caption_protocol_by_hand():
    # 2 clips (gallery a0, a1), 5 captions each; captions 0-4 belong to clip 0, 5-9 to clip 1
    group = np.repeat([0, 1], 5)
    scores = np.zeros((10, 2), np.float32)  # [Q, G]
    scores[:, 0] = [0.9, 0.1, 0.1, 0.1, 0.5, 0.2, 0.2, 0.2, 0.9, 0.2]
    scores[:, 1] = [0.1, 0.9, 0.9, 0.9, 0.5, 0.8, 0.8, 0.8, 0.1, 0.8]
    t2a = text_to_audio_ranks(scores, group)
    # caption 4 ties between the clips: counted against it (rank 1); caption 8 prefers the wrong clip
    assert t2a.tolist() == [0, 1, 1, 1, 1, 0, 0, 0, 1, 0]
    a2t = audio_to_text_ranks(scores.T, group)
    # clip 0: its best caption (0, score 0.9) ties with caption 8 of clip 1 -> rank 1; clip 1: captions 1-3 (0.9,
    # of clip 0) come first; its best (5-7, 9, tied at 0.8: they do not count against each other) ranks 3
    assert a2t.tolist() == [1, 3]
    both = retrieval_metrics(scores, group)
    assert both["query->audio"]["R@1"] == pytest.approx(0.5) and both["query->audio"]["N"] == 10
    assert both["audio->query"]["R@1"] == 0.0 and both["audio->query"]["R@5"] == 1.0 and both["audio->query"]["N"] == 2


def test_text_to_audio_equals_target_ranks_on_embeddings():
    q, g = unit_rows(50, 8, seed=3), unit_rows(10, 8, seed=4)
    group = np.random.default_rng(5).integers(0, 10, 50)
    assert (text_to_audio_ranks(q @ g.T, group) == target_ranks(q, g, group)).all()


# ---------------------------------------------------------------------------
# MLP mappers
# ---------------------------------------------------------------------------


def test_mlp_regression_recovers_a_linear_map():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 24))
    b = unit_rows(1200, 16, seed=1)
    a = b @ w
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    model = MLPMapper(MLPConfig(hidden=64, epochs=30, patience=30, dropout=0.0, weight_decay=0.0, lr=3e-3, batch_size=64)).fit(
        a[:1000], b[:1000], val=(a[1000:1100], b[1000:1100], np.arange(100)))
    cos = (model(b[1100:]) * a[1100:]).sum(1)
    assert cos.mean() > 0.97
    assert (target_ranks(model(b[1100:]), a[1100:].astype(np.float32), np.arange(100)) == 0).mean() > 0.9


@pytest.mark.parametrize("loss", ["regression", "infonce"])
def test_mlp_mappers_beat_raw_cosine_on_synthetic_gap_pairs(loss):
    from diffgap_search.synthetic import GapConfig, make_pairs, split_of

    p = make_pairs(3000, GapConfig(dim_a=128, dim_b=128), seed=0)
    split = split_of(p.pair_id)
    tr, va, te = (split == "train"), (split == "val"), (split == "test")
    model, chosen = fit_mlp(p.a[tr], p.b[tr], p.a[va], p.b[va], np.arange(va.sum()), loss, seed=0,
                            base=MLPConfig(hidden=128, epochs=12))
    raw = (target_ranks(p.b[te], p.a[te], np.arange(te.sum())) < 1).mean()
    mapped = (target_ranks(model(p.b[te]), p.a[te], np.arange(te.sum())) < 1).mean()
    assert mapped > raw + 0.2, (loss, raw, mapped, chosen)  # measured: raw 0.27, regression 0.66, infonce 0.79
    assert chosen["dropout"] in (0.1, 0.5) and 1 <= chosen["epoch"] <= 12


def test_mlp_mapper_is_seeded():
    a, b = unit_rows(300, 8, seed=1), unit_rows(300, 8, seed=2)
    x1 = MLPMapper(MLPConfig(epochs=2, seed=3)).fit(a, b)(b[:5])
    x2 = MLPMapper(MLPConfig(epochs=2, seed=3)).fit(a, b)(b[:5])
    np.testing.assert_array_equal(x1, x2)


# ---------------------------------------------------------------------------
# diffgap-search benchmark
# ---------------------------------------------------------------------------


def test_benchmark_cli_end_to_end_on_tiny_synthetic_pairs(tmp_path):
    result = runner.invoke(app, ["synthetic", "--n", "600", "--dim-a", "32", "--dim-b", "32", "--queries", "1",
                                 "--out", str(tmp_path / "syn")])
    assert result.exit_code == 0, result.output
    pairs = tmp_path / "syn" / "pairs.parquet"
    out = tmp_path / "res" / "tiny"
    result = runner.invoke(app, ["benchmark", "--pairs", str(pairs), "--train", str(pairs), "--out", str(out),
                                 "--recipe", str(REPO / "training" / "tiny.json"), "--ablate", "steps",
                                 "--methods", "raw,mean-shift,ridge,mlp,diffgap,rerank,fusion", "--steps", "5",
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    for suffix in (".md", ".json", "-r1.png", "-steps.png"):
        path = out.with_name(out.name + suffix)
        assert path.exists() and path.stat().st_size > 0, suffix
    assert out.with_name("tiny-r1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads(out.with_name("tiny.json").read_text())
    md = out.with_name("tiny.md").read_text()
    assert "### Methods, query->audio" in md and "### Ablation: steps, audio->query" in md and "- cores:" in md
    assert "| raw |" in result.output  # the command prints the tables it writes
    rows = {(r["method"], r["direction"]): r for r in record["rows"]}
    assert {m for m, _ in rows} == {"raw", "mean-shift", "ridge", "mlp", "diffgap", "rerank", "fusion"}
    assert list(dict.fromkeys(r["method"] for r in record["ablations"]["steps"])) == ["S=50", "S=20", "S=5"]

    # raw and ridge, computed here directly with metrics.py, equal what the benchmark wrote
    test = read_pairs(pairs, split="test")
    train = read_pairs(pairs)
    train = train.subset(np.flatnonzero(train.split != "test"))
    gallery, target = test.gallery()
    raw_t2a = recall_at(target_ranks(test.b, gallery, target))
    raw_a2t = recall_at(audio_to_text_ranks(gallery @ test.b.T, test.group))
    fit, val = split_train_val(train, 0.05, 0)
    vg, vt = val.gallery()
    _, first = np.unique(val.group, return_index=True)
    forward, _ = fit_ridge(fit.a, fit.b, vg, val.b, vt)
    reverse, _ = fit_ridge(fit.b, fit.a, val.b, vg, first)
    ridge_t2a = recall_at(target_ranks(forward(test.b), gallery, target))
    ridge_a2t = recall_at(audio_to_text_ranks(reverse(gallery) @ test.b.T, test.group))
    for (method, direction), ref in {("raw", "query->audio"): raw_t2a, ("raw", "audio->query"): raw_a2t,
                                     ("ridge", "query->audio"): ridge_t2a, ("ridge", "audio->query"): ridge_a2t}.items():
        row = rows[(method, direction)]
        for key in ("R@1", "R@5", "R@10", "mAP@10", "median rank", "N"):
            assert row[key] == pytest.approx(ref[key]), (method, direction, key)
    assert rows[("raw", "query->audio")]["N"] == 60 and rows[("raw", "audio->query")]["N"] == 60


def test_benchmark_raw_alone_needs_no_training(tmp_path):
    a = unit_rows(40, 8, seed=1)
    b = a + 0.3 * unit_rows(40, 8, seed=2)
    write_pairs(tmp_path / "p.parquet", a, b / np.linalg.norm(b, axis=1, keepdims=True))
    result = runner.invoke(app, ["benchmark", "--pairs", str(tmp_path / "p.parquet"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "r.json").read_text())
    assert [r["method"] for r in record["rows"]] == ["raw", "raw"]
    assert record["rows"][0]["R@1"] == pytest.approx(recall_at(target_ranks(b, a, np.arange(40)))["R@1"], abs=1e-6)


def _tiny_model(tmp_path, dim):
    from diffgap_search.diffusion.network import NetworkConfig
    from diffgap_search.diffusion.train import TrainConfig, train

    pairs = tmp_path / f"train{dim}.parquet"
    write_pairs(pairs, unit_rows(64, dim, seed=1), unit_rows(64, dim, seed=2))
    config = TrainConfig(epochs=1, max_steps=2, val_fraction=0.0, network=NetworkConfig(hidden=16, emb=16, blocks=1))
    train(pairs, tmp_path / "model", config, progress=False, log=lambda s: None)
    return tmp_path / "model"


def _one_line_exit_2(argv):
    result = runner.invoke(app, [str(a) for a in argv])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_benchmark_bad_input_is_one_line_exit_2(tmp_path):
    model = _tiny_model(tmp_path, 8)
    write_pairs(tmp_path / "other.parquet", unit_rows(20, 12, seed=3), unit_rows(20, 12, seed=4))
    line = _one_line_exit_2(["benchmark", "--pairs", tmp_path / "other.parquet", "--model", model, "--out", tmp_path / "x"])
    assert "a=12, b=12" in line and "a=8, b=8" in line
    line = _one_line_exit_2(["benchmark", "--pairs", tmp_path / "missing.parquet", "--train", tmp_path / "other.parquet",
                             "--out", tmp_path / "x"])
    assert "missing.parquet" in line
    np.save(tmp_path / "bad.npy", np.zeros((3, 4), np.float32))
    assert "(2, N, D)" in _one_line_exit_2(["benchmark", "--pairs", tmp_path / "bad.npy", "--out", tmp_path / "x"])
    assert "not a method" in _one_line_exit_2(["benchmark", "--pairs", tmp_path / "other.parquet", "--methods", "nope",
                                                "--out", tmp_path / "x"])
    assert "--train" in _one_line_exit_2(["benchmark", "--pairs", tmp_path / "other.parquet", "--methods", "ridge",
                                          "--out", tmp_path / "x"])
    assert not (tmp_path / "x.md").exists()


def test_benchmark_console_script_prints_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "diffgap_search.cli", "benchmark", "--pairs", str(tmp_path / "nope.npy"),
                           "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def test_benchmark_help_has_an_example():
    result = runner.invoke(app, ["benchmark", "--help"])
    assert result.exit_code == 0
    assert "Example: diffgap-search benchmark" in " ".join(result.output.split())
