"""CLI tests of `train` and `translate`: help, a tiny training run, resume, translation, bad input."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from diffgap_search.cli import app
from diffgap_search.diffusion.train import TrainConfig, load_recipe
from diffgap_search.diffusion.translator import Translator
from diffgap_search.errors import DiffgapError
from diffgap_search.pairs import write_pairs
from diffgap_search.storage import read_embeddings, write_shard
from diffgap_search.synthetic import GapConfig, make_pairs

from conftest import assert_one_error_line, unit_rows

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "training" / "tiny.json"
DIM_A, DIM_B = 24, 16

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A pairs file (400 pairs, 24/16 dims), a query shard (dim 16, space None) and a trained model."""
    root = tmp_path_factory.mktemp("cli_translator")
    chunk = make_pairs(400, GapConfig(dim_a=DIM_A, dim_b=DIM_B))
    pairs = write_pairs(root / "pairs.parquet", chunk.a, chunk.b)
    queries = root / "queries.parquet"
    write_shard(queries, np.arange(1000, 1010), chunk.b[:10], pa.table({"caption": [f"query {i}" for i in range(10)]}))
    model = root / "model"
    result = invoke("train", "--pairs", pairs, "--out", model, "--recipe", TINY, "--max-steps", 30, "--epochs", 10, "--device", "cpu")
    assert result.exit_code == 0, (result.output, result.stderr, repr(result.exception))
    return {"root": root, "pairs": pairs, "queries": queries, "model": model, "train_output": result.output, "chunk": chunk}


@pytest.mark.parametrize("command", ["train", "translate"])
def test_help_has_an_example(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert "Example: diffgap-search " + command in " ".join(result.output.split())


def test_every_recipe_loads():
    recipes = sorted((REPO / "training").glob("*.json"))
    assert TINY in recipes
    for path in recipes:
        config = TrainConfig.from_dict(load_recipe(path), str(path))
        assert config.epochs >= 1 and config.batch_size >= 1, path
    # the paper's settings moved to paper-*.json; the old names extend them, so old commands train the same
    for old, new in (("audiocaps.json", "paper-audiocaps.json"), ("vggsound.json", "paper-vggsound.json")):
        paper = TrainConfig.from_dict(load_recipe(REPO / "training" / new))
        assert TrainConfig.from_dict(load_recipe(REPO / "training" / old)) == paper
        assert (paper.interval, paper.contrastive_weight) == (5000, 0.0)
    assert TrainConfig().interval == 100  # the default is what measured best for retrieval, not the paper's m


def test_a_recipe_may_extend_another(tmp_path):
    (tmp_path / "base.json").write_text(json.dumps({"epochs": 7, "lr": 0.001, "description": "base"}))
    (tmp_path / "child.json").write_text(json.dumps({"extends": "base.json", "lr": 0.002}))
    assert load_recipe(tmp_path / "child.json") == {"epochs": 7, "lr": 0.002, "description": "base"}
    (tmp_path / "self.json").write_text(json.dumps({"extends": "self.json"}))
    (tmp_path / "ping.json").write_text(json.dumps({"extends": "pong.json"}))
    (tmp_path / "pong.json").write_text(json.dumps({"extends": "ping.json"}))
    for name in ("self.json", "ping.json"):
        with pytest.raises(DiffgapError, match="extends"):
            load_recipe(tmp_path / name)


def test_train_writes_the_model_and_reports_its_parameters(work):
    model, output = work["model"], work["train_output"]
    for name in ("model.safetensors", "config.json", "log.csv", "training_state.safetensors"):
        assert (model / name).is_file(), name
    assert "saved" in output
    # 30 steps with the direction flipping every 200: the user is told the reverse direction stays untrained
    assert "warning: the direction flips every 200 steps and this run has 30" in output and "--interval 3" in output
    match = re.search(r"saved .*: ([\d,]+) parameters, (\d+) steps", output)
    assert match, output
    translator = Translator.load(model)
    assert int(match.group(1).replace(",", "")) == translator.parameter_count
    assert int(match.group(2)) == 30 == translator.config.training["steps"]
    assert (translator.config.space_a.dim, translator.config.space_b.dim) == (DIM_A, DIM_B)
    log = (model / "log.csv").read_text().splitlines()
    assert log[0].startswith("epoch,step,train_loss") and len(log) == 1 + 5  # 380 training pairs: 6 steps an epoch


def test_train_again_without_resume_is_refused_and_changes_nothing(work, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(work["model"], model)
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    result = invoke("train", "--pairs", work["pairs"], "--out", model, "--recipe", TINY, "--max-steps", 30, "--epochs", 10)
    assert_one_error_line(result, "--resume")
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before


def test_resume_continues_the_run(work, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(work["model"], model)
    rows_before = len((model / "log.csv").read_text().splitlines())
    result = invoke("train", "--pairs", work["pairs"], "--out", model, "--recipe", TINY, "--max-steps", 40, "--epochs", 10, "--resume")
    assert result.exit_code == 0, (result.output, result.stderr)
    assert re.search(r"saved .*, 40 steps", result.output), result.output
    log = (model / "log.csv").read_text().splitlines()
    assert len(log) > rows_before
    assert log[-1].split(",")[:2] == ["7", "40"]  # epoch 7 (steps 36..41) stopped at step 40
    assert Translator.load(model).config.training["steps"] == 40


def test_val_every_validates_between_epoch_ends(work, tmp_path):
    model = tmp_path / "model"
    result = invoke("train", "--pairs", work["pairs"], "--out", model, "--recipe", TINY, "--max-steps", 14,
                    "--epochs", 10, "--val-every", 4, "--interval", 5)
    assert result.exit_code == 0, (result.output, result.stderr)
    rows = list(csv.DictReader((model / "log.csv").open()))
    assert [int(r["step"]) for r in rows] == [4, 6, 8, 12, 14]  # every 4 steps and every epoch's end (6 steps)
    kept = Translator.load(model).config.training
    eligible = [r for r in rows if r["both_directions_trained"] == "True"]
    best = max(eligible, key=lambda r: (float(r["val_R@1"]), -float(r["val_loss_to-audio"])))
    assert kept["steps"] == int(best["step"]) and f"kept step {best['step']} of epoch {best['epoch']}" in result.output


def test_translate_to_parquet_and_npy(work, tmp_path):
    out = tmp_path / "translated.parquet"
    result = invoke("translate", "--model", work["model"], "--input", work["queries"], "--out", out, "--steps", 3)
    assert result.exit_code == 0, (result.output, result.stderr)
    assert "translated 10 vectors" in result.output
    emb = read_embeddings(out)
    assert emb.vectors.shape == (10, DIM_A)
    np.testing.assert_allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=1e-5)
    assert emb.ids.tolist() == list(range(1000, 1010))
    assert emb.metadata.column("caption").to_pylist() == [f"query {i}" for i in range(10)]

    npy = tmp_path / "translated.npy"
    result = invoke("translate", "--model", work["model"], "--input", work["queries"], "--out", npy, "--steps", 3)
    assert result.exit_code == 0, (result.output, result.stderr)
    x = np.load(npy)
    assert x.shape == (10, DIM_A) and x.dtype == np.float32
    umask = os.umask(0)
    os.umask(umask)
    assert npy.stat().st_mode & 0o777 == 0o666 & ~umask  # a plain file's mode, not mkstemp's 0600
    np.testing.assert_allclose(x, emb.vectors, atol=1e-6)  # same seed, same translation


def test_translate_defaults_to_the_sampling_the_translator_stored(work, tmp_path):
    """Without --steps/--samples/--guidance, translate uses the S, K, w that train validated at and stored."""
    translator = Translator.load(work["model"])
    stored = json.loads((work["model"] / "config.json").read_text())["sampling"]
    assert stored == {"steps": 5, "samples": 4, "guidance": 4.0} == vars(translator.sampling)
    default, explicit, plain = tmp_path / "default.npy", tmp_path / "explicit.npy", tmp_path / "plain.npy"
    result = invoke("translate", "--model", work["model"], "--input", work["queries"], "--out", default)
    assert result.exit_code == 0, (result.output, result.stderr)
    assert "S=5, K=4, w=4)" in result.output
    for out, options in ((explicit, ["--steps", 5, "--samples", 4, "--guidance", 4]), (plain, ["--samples", 1, "--guidance", 1])):
        result = invoke("translate", "--model", work["model"], "--input", work["queries"], "--out", out, *options)
        assert result.exit_code == 0, (result.output, result.stderr)
    assert np.array_equal(np.load(default), np.load(explicit))
    assert not np.allclose(np.load(default), np.load(plain))  # the options are not ignored


def test_train_refuses_pairs_without_training_rows(work, tmp_path):
    """A file from `prepare --split val` (every row split == val) is refused in one line naming the split counts."""
    chunk = work["chunk"]
    only_val = write_pairs(tmp_path / "val_pairs.parquet", chunk.a[:50], chunk.b[:50], split=["val"] * 50)
    result = invoke("train", "--pairs", only_val, "--out", tmp_path / "m", "--recipe", TINY)
    assert_one_error_line(result, "val_pairs.parquet: no training rows (split counts: val 50)", "prepare --split train")
    assert not (tmp_path / "m").exists()


def test_bad_input_gives_one_error_line_and_exit_2(work, tmp_path):
    model, pairs, queries = work["model"], work["pairs"], work["queries"]
    wrong_dim = tmp_path / "wrong_dim.parquet"
    write_shard(wrong_dim, np.arange(3), unit_rows(3, DIM_A))
    damaged = tmp_path / "damaged"
    shutil.copytree(model, damaged)
    (damaged / "config.json").write_text('{"format": "diffgap-translator", "spaces": ')
    only_a = tmp_path / "only_a.parquet"
    pq.write_table(pa.table({"a": pa.array(unit_rows(5, DIM_A).tolist(), pa.list_(pa.float32()))}), only_a)
    bad_recipe = tmp_path / "bad_recipe.json"
    bad_recipe.write_text(json.dumps({**json.loads(TINY.read_text()), "learning_rate": 0.1}))
    out_npy = tmp_path / "x.npy"
    cases = [
        ("wrong dim", ["translate", "--model", model, "--input", wrong_dim, "--out", out_npy], ["dim is 24, expected 16"]),
        ("missing model", ["translate", "--model", tmp_path / "nowhere", "--input", queries, "--out", out_npy], ["missing"]),
        ("damaged config", ["translate", "--model", damaged, "--input", queries, "--out", out_npy], ["config.json", "not readable JSON"]),
        ("txt out", ["translate", "--model", model, "--input", queries, "--out", tmp_path / "x.txt"], [".parquet or .npy"]),
        ("missing pairs", ["train", "--pairs", tmp_path / "nope.parquet", "--out", tmp_path / "m1", "--recipe", TINY], ["no such pairs file"]),
        ("no column b", ["train", "--pairs", only_a, "--out", tmp_path / "m2", "--recipe", TINY], ["missing column 'b'"]),
        ("unknown recipe key", ["train", "--pairs", pairs, "--out", tmp_path / "m3", "--recipe", bad_recipe], ["unknown setting 'learning_rate'"]),
    ]
    for name, argv, fragments in cases:
        assert_one_error_line(invoke(*argv), *fragments, name=name)
    assert not out_npy.exists() and not (tmp_path / "x.txt").exists()
    assert not any((tmp_path / m).exists() for m in ("m1", "m2", "m3"))


def test_module_entry_point_prints_no_traceback(work, tmp_path):
    """`python -m diffgap_search.cli translate` in a real process: one line on stderr, exit 2."""
    proc = subprocess.run(
        [sys.executable, "-m", "diffgap_search.cli", "translate", "--model", str(tmp_path / "nowhere"),
         "--input", str(work["queries"]), "--out", str(tmp_path / "x.npy")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert "config.json: missing" in proc.stderr


def _config_patch(model: Path, folder: Path, text: str) -> Path:
    shutil.copytree(model, folder)
    (folder / "config.json").write_text(text)
    return folder


# Values that used to reach torch/diffusers unchecked and end in a traceback.
UNCHECKED_VALUES = {
    "steps beyond train_timesteps": lambda w, t: ["translate", "--model", w["model"], "--input", w["queries"], "--out", t / "x.npy", "--steps", 2000],
    "config.json not an object": lambda w, t: ["translate", "--model", _config_patch(w["model"], t / "d", "[1, 2]"), "--input", w["queries"], "--out", t / "x.npy"],
    "config.json hidden not an int": lambda w, t: ["translate", "--model", _config_patch(
        w["model"], t / "d", (w["model"] / "config.json").read_text().replace('"hidden": 64', '"hidden": "64"')), "--input", w["queries"], "--out", t / "x.npy"],
    "recipe epochs a string": lambda w, t: ["train", "--pairs", w["pairs"], "--out", t / "m", "--recipe", _write(t / "r.json", {"epochs": "3"})],
    "recipe val_every negative": lambda w, t: ["train", "--pairs", w["pairs"], "--out", t / "m", "--recipe", _write(t / "r.json", {"val_every": -1})],
    "recipe unknown beta_schedule": lambda w, t: ["train", "--pairs", w["pairs"], "--out", t / "m", "--recipe", _write(t / "r.json", {"schedule": {"beta_schedule": "nope"}})],
}


def _write(path: Path, patch: dict) -> Path:
    path.write_text(json.dumps({**json.loads(TINY.read_text()), **patch}))
    return path


@pytest.mark.parametrize("name", sorted(UNCHECKED_VALUES))
def test_bad_values_in_configs_and_options_give_one_line(work, tmp_path, name):
    result = invoke(*UNCHECKED_VALUES[name](work, tmp_path))
    assert_one_error_line(result, name=name)
    assert not (tmp_path / "m").exists()  # a failed train leaves no folder behind
