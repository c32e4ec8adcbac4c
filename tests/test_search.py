"""The engine's chain: candidate union, z-score fusion, diffusion reranking, calibration, reverse queries, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from typer.testing import CliRunner

from conftest import shared_data, unit_rows
from diffgap_search.calibrate import CalibrationGrid, calibrate, load_calibration, write_calibration
from diffgap_search.cli import app
from diffgap_search.diffusion.network import NetworkConfig
from diffgap_search.diffusion.normalize import SpaceNorm
from diffgap_search.diffusion.train import TrainConfig, train
from diffgap_search.diffusion.translator import Space, Translator, TranslatorConfig
from diffgap_search.errors import DiffgapError
from diffgap_search.engine import Engine, plan_route, unite
from diffgap_search.index import Index
from diffgap_search.metrics import recall_at, target_ranks
from diffgap_search.pairs import read_pairs, write_pairs
from diffgap_search.queries import Queries
from diffgap_search.signals import FusionConfig, diffusion_scores, fuse, noise_draws, standardize
from diffgap_search.storage import write_shard
from diffgap_search.synthetic import GapConfig, make_pairs
from diffgap_search.types import Direction

REPO = Path(__file__).resolve().parents[1]
DIM = 16  # the tiny CLAP's space
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


# -- a stand-in denoiser whose error is computed by hand ---------------------------------------


class Shift(torch.nn.Module):
    """prediction = condition + s * x_t, in either direction (x0 is the prediction target: "sample")."""

    def __init__(self, s: float):
        super().__init__()
        self.s = s

    def forward(self, x_t, t, cond, direction, keep=None):
        return (0 if cond is None else cond) + self.s * x_t


def stand_in_translator(dim: int = 6, s: float = 0.7, names=(None, None), modalities=("audio", None)) -> Translator:
    """A real Translator around `Shift`, with identity normalization (norm = L2-normalize)."""
    config = TranslatorConfig(space_a=Space(names[0], dim, modalities[0]), space_b=Space(names[1], dim, modalities[1]),
                              network=NetworkConfig(dim_a=dim, dim_b=dim))
    return Translator(config, Shift(s), SpaceNorm(dim), SpaceNorm(dim))


def hand_diffusion_scores(translator, queries, candidates, config) -> np.ndarray:
    """-(1/J) sum_j mean_d (c + s x_t_j - q)^2 with x_t_j = sqrt(abar_t) q + sqrt(1 - abar_t) eps_j."""
    timesteps, noise = noise_draws(config, queries.shape[1], 1000)
    abar = translator.train_scheduler.alphas_cumprod.double().numpy()[timesteps]  # [J]
    q = queries.astype(np.float64)[:, None, None, :]  # [Q, 1, 1, d]
    x_t = np.sqrt(abar)[None, None, :, None] * q + np.sqrt(1 - abar)[None, None, :, None] * noise[None, None].astype(np.float64)
    c = candidates.astype(np.float64)[:, :, None, :]  # [Q, N, 1, d]
    pred = c + translator.network.s * x_t  # [Q, N, J, d]
    return -((pred - q) ** 2).mean(axis=(-1, -2))


def flat_index(tmp_path: Path, vectors: np.ndarray, *, space=None, modality="audio", name="ix") -> Index:
    shard = tmp_path / f"{name}.parquet"
    write_shard(shard, np.arange(100, 100 + len(vectors)), vectors,
                pa.table({"path": [f"clip{i}.wav" for i in range(len(vectors))]}), space=space, modality=modality)
    return Index.build([shard], tmp_path / name, index_type="flat", device="cpu")


def engine(index, translator=None, config=None) -> Engine:
    """An engine whose every direction uses `config` (the defaults when None)."""
    return Engine(index, translator, configs=None if config is None else {d: config for d in Direction})


def test_diffusion_scores_equal_the_hand_computed_errors():
    tr = stand_in_translator()
    config = FusionConfig(timesteps=5, t_min=10, t_max=900, seed=3)
    queries, candidates = unit_rows(3, 6, seed=1), unit_rows(12, 6, seed=2).reshape(3, 4, 6)
    ours = diffusion_scores(tr, queries, candidates, config, "from-audio")
    np.testing.assert_allclose(ours, hand_diffusion_scores(tr, queries, candidates, config), rtol=1e-5, atol=1e-6)
    timesteps, _ = noise_draws(config, 6, 1000)
    assert timesteps.tolist() == [10, 232, 455, 678, 900]


def test_rerank_by_diffusion_alone_equals_the_hand_computed_ordering(tmp_path, monkeypatch):
    monkeypatch.setattr("diffgap_search.engine.SCORE_BLOCK_FLOATS", 40 * 6)  # one query per scoring block
    tr = stand_in_translator(s=1.5)
    xb = unit_rows(40, 6, seed=5)
    index = flat_index(tmp_path, xb)
    queries = Queries(unit_rows(4, 6, seed=6))
    config = FusionConfig(candidates=40, timesteps=6, seed=1).with_weights(diffusion=1.0)
    ranking = engine(index, tr, config).search_queries(queries, k=40)
    expected = hand_diffusion_scores(tr, queries.vectors, np.broadcast_to(xb, (4, 40, 6)), config)  # [Q, 40]
    hand_order = np.argsort(-expected, axis=1, kind="stable")
    np.testing.assert_array_equal(ranking.positions, hand_order)
    np.testing.assert_allclose(ranking.signals["diffusion"], np.take_along_axis(expected, hand_order, 1), rtol=1e-5)
    cosine_order = np.argsort(-(queries.vectors @ xb.T), axis=1)
    assert (hand_order != cosine_order).any()  # the test can tell reranking from cosine search


# -- candidates and fusion against numpy references --------------------------------------------


def test_unite_equals_a_python_reference():
    rng = np.random.default_rng(0)
    a = rng.integers(-1, 12, size=(50, 6))
    b = rng.integers(-1, 12, size=(50, 4))
    united = unite(a, b)
    for row, x, y in zip(united, a, b):
        want = list(dict.fromkeys(int(v) for v in [*x, *y] if v >= 0))
        assert row[: len(want)].tolist() == want
        assert (row[len(want):] == -1).all()
    assert united.shape[1] == max(len({v for v in [*x, *y] if v >= 0}) for x, y in zip(a, b))


def test_engine_candidates_are_the_union_of_translated_and_raw_top_n(tmp_path):
    tr = stand_in_translator(s=0.3)
    xb = unit_rows(60, 6, seed=7)
    index = flat_index(tmp_path, xb)
    queries = Queries(unit_rows(5, 6, seed=8))
    config = FusionConfig(candidates=7).with_weights(translated=1.0)
    searcher = engine(index, tr, config)
    route = plan_route(queries, index, tr)
    assert route.direction is Direction.TO_AUDIO and route.raw  # no space names, one dim: raw search joins in
    translated = searcher.translate(queries, route, config)
    got = searcher.candidates(queries, translated, route, 7)
    for q in range(5):
        want = set(np.argsort(-(translated[q] @ xb.T))[:7]) | set(np.argsort(-(queries.vectors[q] @ xb.T))[:7])
        assert set(got[q][got[q] >= 0].tolist()) == {int(v) for v in want}


def test_z_score_fusion_equals_a_numpy_reference():
    rng = np.random.default_rng(1)
    signals = {"raw": rng.standard_normal((6, 9)), "translated": rng.standard_normal((6, 9)),
               "diffusion": rng.standard_normal((6, 9))}
    signals["diffusion"][2] = 0.25  # a signal that cannot tell this query's candidates apart
    mask = rng.random((6, 9)) < 0.8
    mask[:, 0] = True
    weights = {"raw": 0.5, "translated": 1.0, "diffusion": 0.25}
    fused = fuse(signals, weights, mask)
    for q in range(6):
        m = mask[q]
        want = np.zeros(m.sum())
        for name, w in weights.items():
            x = signals[name][q][m]
            want += w * ((x - x.mean()) / x.std() if x.std() > 0 else 0.0)
        np.testing.assert_allclose(fused[q][m], want, rtol=1e-10, atol=1e-12)
        assert np.isneginf(fused[q][~m]).all()
    assert (standardize(signals["diffusion"], mask)[2] == 0).all()


# -- calibration --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny translator trained for a few seconds on synthetic 16/16 pairs, and validation pairs."""
    root = tmp_path_factory.mktemp("tiny_translator")
    gap = GapConfig(dim_a=DIM, dim_b=DIM)
    train_pairs = make_pairs(600, gap, seed=1)
    pairs = write_pairs(root / "train.parquet", train_pairs.a, train_pairs.b)
    config = TrainConfig(epochs=4, batch_size=64, lr=1e-3, interval=20, network=NetworkConfig(hidden=32, emb=32, blocks=2),
                         val_queries=50, val_steps=2)
    train(pairs, root / "model", config, progress=False, log=lambda s: None)
    val = make_pairs(900, gap, seed=2)
    rows = np.arange(600, 900)  # rows the translator never saw
    groups = rows // 2 * 2  # two captions (b) share one clip (a)
    val_file = write_pairs(root / "val.parquet", val.a[groups], val.b[rows], group_id=groups)
    return {"root": root, "model": root / "model", "val": val_file}


def test_calibration_is_never_below_raw_or_translation_alone(tiny, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny["model"], model)
    translator, val = Translator.load(model), read_pairs(tiny["val"])
    grid = CalibrationGrid(candidates=(10, 30), steps=(1, 3), weights=(0.0, 0.5, 1.0))
    result = calibrate(translator, val, grid=grid)
    gallery, target = val.gallery()
    plain = {"raw": recall_at(target_ranks(val.b, gallery, target))}
    for s in grid.steps:
        translated = translator.translate(val.b, steps=s, generator=torch.Generator().manual_seed(0))
        plain[f"translated S={s}"] = recall_at(target_ranks(translated, gallery, target))
    fused = result.scores["fused"]
    for name, m in plain.items():
        assert fused["R@1"] >= m["R@1"], (name, fused, m)
    for name in ("R@1", "mAP@10"):  # raw alone through the fusion code == plain cosine search
        assert result.scores["raw"][name] == pytest.approx(plain["raw"][name])
    assert result.scores["translated"]["R@1"] == pytest.approx(plain[f"translated S={result.config.steps}"]["R@1"])
    assert result.config.candidates in (10, 30) and result.config.steps in (1, 3)

    write_calibration(model, result)
    stored = json.loads((model / "calibration.json").read_text())["to-audio"]
    assert stored["settings"] == result.config.to_dict()
    assert stored["validation"]["scores"]["fused"] == fused
    assert load_calibration(model)[Direction.TO_AUDIO] == result.config
    assert Engine(flat_index(tmp_path, gallery), Translator.load(model)).config(Direction.TO_AUDIO) == result.config  # query's defaults


def test_a_damaged_calibration_is_one_clear_error(tiny, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny["model"], model)
    bad = {"to-audio": {"settings": {**FusionConfig().to_dict(), "candidates": 0}}}
    (model / "calibration.json").write_text(json.dumps(bad))
    with pytest.raises(DiffgapError, match=r"calibration.json: .*candidates = 0 .*run `diffgap-search calibrate` again"):
        Engine(flat_index(tmp_path, unit_rows(10, DIM)), Translator.load(model))
    (model / "calibration.json").write_text("{not json")
    with pytest.raises(DiffgapError, match=r"calibration.json: not readable JSON .*calibrate` again"):
        load_calibration(model)


def test_legacy_fusion_section_in_config_json_still_loads(tiny, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny["model"], model)
    config = json.loads((model / "config.json").read_text())
    legacy = {"raw": 0.0, "translated": 1.0, "diffusion": 0.25, "candidates": 20, "steps": 2, "samples": 1, "guidance": 1.0,
              "timesteps": 8, "t_min": 100, "t_max": 600, "seed": 0}
    config["fusion"] = {"settings": legacy, "validation": {}}
    (model / "config.json").write_text(json.dumps(config))
    loaded = load_calibration(model)[Direction.TO_AUDIO]
    assert loaded.weights == {"raw": 0.0, "translated": 1.0, "diffusion": 0.25} and loaded.candidates == 20


# -- reverse queries and space checks -----------------------------------------------------------


def test_audio_queries_search_a_caption_index_through_the_other_direction(tiny, tmp_path):
    translator = Translator.load(tiny["model"])
    translator.config.space_a = Space("clap:x", DIM, "audio")
    translator.config.space_b = Space("clap:x", DIM, "text")
    val = read_pairs(tiny["val"])
    captions = flat_index(tmp_path, val.b[:40], space="clap:x", modality="text", name="captions")
    audio = Queries(val.a[:3], "clap:x", "audio")
    config = FusionConfig(candidates=40, steps=2).with_weights(raw=0.5, translated=1.0, diffusion=0.5)
    ranking = engine(captions, translator, config).search_queries(audio, k=40)
    assert ranking.route.direction is Direction.FROM_AUDIO and ranking.route.raw  # from-audio; CLAP text and audio share a space
    # the diffusion signal is the other direction: the audio query denoised, conditioned on each caption
    timesteps, noise = noise_draws(config, DIM, 1000)
    errors = translator.denoise_error(audio.vectors, val.b[:40], timesteps, noise, "to-audio")  # [3, 40]
    np.testing.assert_allclose(ranking.signals["diffusion"], np.take_along_axis(-errors, ranking.positions, 1), rtol=1e-5)
    translated = translator.translate(audio.vectors, "from-audio", steps=2, samples=1, guidance=1.0,
                                      generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(ranking.signals["translated"], np.take_along_axis(translated @ val.b[:40].T, ranking.positions, 1), atol=1e-5)


def test_mismatched_spaces_are_one_line_errors_naming_both(tmp_path):
    tr = stand_in_translator(names=("clap:x", "clap:x"), modalities=("audio", "text"))
    other = flat_index(tmp_path, unit_rows(10, 6), space="clap:other", modality="audio", name="other")
    with pytest.raises(DiffgapError, match=r"index .* space 'clap:other' .*translated into space 'clap:x'") as err:
        Engine(other, tr).search_queries(Queries(unit_rows(2, 6), "clap:x", "text"))
    assert "\n" not in str(err.value)
    index = flat_index(tmp_path, unit_rows(10, 6), space="clap:x", modality="audio")
    with pytest.raises(DiffgapError, match=r"queries are in space 'clip:y' \(video, dim 6\), the translator's sides are"):
        Engine(index, tr).search_queries(Queries(unit_rows(2, 6), "clip:y", "video"))
    with pytest.raises(DiffgapError, match="dim 5"):
        Engine(index, tr).search_queries(Queries(unit_rows(2, 5), "clap:x", "text"))


# -- the CLI end to end with a tiny CLAP over real audio ---------------------------------------


@pytest.fixture(scope="module")
def clap_index(tmp_path_factory):
    from tiny_models import tiny_hf_clap

    root = tmp_path_factory.mktemp("clap_index")
    clips = root / "clips"
    clips.mkdir()
    for wav in sorted(shared_data("audio", "esc50").glob("*.wav"))[:8]:
        shutil.copy(wav, clips / wav.name)
    clap = tiny_hf_clap(root / "tiny-clap")
    result = invoke("build-index", clips, "--encoder", f"hf:{clap}", "--out", root / "ix", "--index-type", "flat", "--device", "cpu")
    assert result.exit_code == 0, (result.output, result.stderr)
    return {"clap": clap, "index": root / "ix", "clips": clips}


def test_cli_calibrate_then_query_texts_and_audio(tiny, clap_index, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny["model"], model)
    result = invoke("calibrate", "--model", model, "--pairs", tiny["val"], "--device", "cpu")
    assert result.exit_code == 0, (result.output, result.stderr)
    assert "calibrated" in result.output and "fused" in result.output
    assert set(load_calibration(model)) == {Direction.TO_AUDIO, Direction.FROM_AUDIO}

    encoder = f"hf:{clap_index['clap']}"
    result = invoke("query", clap_index["index"], "a dog barks", "rain on a tin roof", "--model", model, "--encoder", encoder,
                    "--k", 3, "--device", "cpu")
    assert result.exit_code == 0, (result.output, result.stderr)
    assert "query 0: a dog barks" in result.output and "query 1: rain on a tin roof" in result.output
    assert ".wav" in result.output and "translated" in result.output

    audio = sorted(clap_index["clips"].glob("*.wav"))[0]
    result = invoke("query", clap_index["index"], "a dog barks", "--audio", audio, "--model", model, "--encoder", encoder,
                    "--k", 4, "--candidates", 8, "--steps", 2, "--rerank", "--json", "--device", "cpu")
    assert result.exit_code == 0, (result.output, result.stderr)
    hits = [json.loads(line) for line in result.stdout.splitlines()]
    assert [h["query"] for h in hits] == [0] * 4 + [1] * 4
    assert hits[0]["query_label"] == "a dog barks" and hits[4]["query_label"] == str(audio)
    assert [h["rank"] for h in hits[:4]] == [1, 2, 3, 4]  # 1-based for people
    assert all({"score", "id", "path", "raw", "translated", "diffusion"} <= set(h) for h in hits)
    assert all(hits[i]["score"] >= hits[i + 1]["score"] for i in range(3))
    assert len({h["id"] for h in hits[:4]}) == 4 and all(0 <= h["id"] < 8 for h in hits)

    result = invoke("query", clap_index["index"], "a dog barks", "--model", model, "--encoder", encoder, "--no-rerank", "--json",
                    "--device", "cpu")
    assert result.exit_code == 0, (result.output, result.stderr)
    assert all("diffusion" not in json.loads(line) for line in result.stdout.splitlines())

    # without a translator: plain CLAP text -> audio cosine search
    result = invoke("query", clap_index["index"], "a dog barks", "--encoder", encoder, "--json", "--k", 2, "--device", "cpu")
    assert result.exit_code == 0, (result.output, result.stderr)
    plain = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(plain) == 2 and set(plain[0]) >= {"score", "raw"} and plain[0]["score"] == pytest.approx(plain[0]["raw"])


def test_cli_query_bad_input_gives_one_line(tiny, tmp_path):
    index = flat_index(tmp_path, unit_rows(10, DIM))
    queries = tmp_path / "q.npy"
    np.save(queries, unit_rows(2, DIM))
    cases = [
        (["query", tmp_path / "nowhere", "--embeddings-file", queries], "no such index folder"),
        (["query", index.root, "a dog barks"], "need --encoder"),
        (["query", index.root, "a dog barks", "--embeddings-file", queries, "--encoder", "hf:x"], "not both"),
        (["query", index.root, "--embeddings-file", queries, "--steps", 3], "--steps sets how the translator searches"),
        (["query", index.root], "not both and not neither"),
        (["calibrate", "--model", tiny["model"], "--pairs", tmp_path / "nope.parquet"], "no such pairs file"),
    ]
    for argv, fragment in cases:
        result = invoke(*argv)
        err = result.stderr.strip()
        assert result.exit_code == 2 and err.startswith("error: ") and "\n" not in err and fragment in err, (argv, err)


@pytest.mark.parametrize("command", ["query", "calibrate"])
def test_help_has_an_example(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert "Example: diffgap-search " + command in " ".join(result.output.split())
