"""The reference LAION-CLAP encoder (laion_clap 1.1.7), offline.

A local Hugging Face cache holds a random 1-layer `roberta-base`, and random HTSAT-tiny
checkpoints are written in LAION's own layout (`module.` prefixes, the position_ids key),
so the real loading code runs on small files made here.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import REPO, shared_data
from diffgap_search.cli import app
from diffgap_search.encoders import load_encoder
from diffgap_search.encoders.laion import file_sha256, load_checkpoint
from diffgap_search.errors import DiffgapError
from diffgap_search.ingest import embed_media
from diffgap_search.storage import read_embeddings
from tiny_models import hf_cache, tiny_laion_checkpoint, tiny_roberta_cache

if importlib.util.find_spec("laion_clap") is None:  # find_spec: `import laion_clap` itself would call the hub
    pytest.skip("needs laion_clap: pip install -e '.[dev]'", allow_module_level=True)

SPEC = "laion-clap:HTSAT-tiny"


@pytest.fixture(scope="module")
def laion(tmp_path_factory):
    """HF_HOME with the tiny roberta-base, plus random checkpoints (unfused and fused) in LAION's layout."""
    root = tmp_path_factory.mktemp("laion")
    home = tiny_roberta_cache(root / "hf-home")
    return SimpleNamespace(
        home=home,
        checkpoint=tiny_laion_checkpoint(root / "630k-tiny-random.pt", home),
        fusion_checkpoint=tiny_laion_checkpoint(root / "630k-fusion-tiny-random.pt", home, fusion=True, seed=1),
    )


@pytest.fixture()
def cache(laion):
    with hf_cache(laion.home):
        yield laion


@pytest.fixture(scope="module")
def windows():
    """Three exactly-10-s windows: a chirp, noise, and a quiet decaying tone (float32, 48 kHz)."""
    t = np.arange(480_000, dtype=np.float64) / 48_000
    rng = np.random.default_rng(0)
    return np.stack([
        0.5 * np.sin(2 * np.pi * (200 + 150 * t) * t),
        0.3 * rng.standard_normal(t.size),
        0.2 * np.exp(-t / 3) * np.sin(2 * np.pi * 880 * t),
    ]).astype(np.float32)


@pytest.fixture(scope="module")
def reference(laion):
    """laion_clap itself: its package imports bert-base-uncased and bart-base tokenizers at import
    time (training/data.py), which are stubbed here; roberta-base comes from the tiny cache."""
    import transformers

    from diffgap_search.encoders.laion import hub_offline

    with hf_cache(laion.home), hub_offline():
        with pytest.MonkeyPatch.context() as mp:
            for cls in (transformers.BertTokenizer, transformers.BartTokenizer):
                mp.setattr(cls, "from_pretrained", classmethod(lambda cls, *a, **k: None))
            import laion_clap
            from laion_clap.training import data
        module = laion_clap.CLAP_Module(enable_fusion=False, amodel="HTSAT-tiny", device="cpu")
        module.load_ckpt(str(laion.checkpoint), verbose=False)  # its own loader (unpickles: our file)
    return SimpleNamespace(module=module, get_audio_features=data.get_audio_features)


def test_audio_embeddings_are_unit_and_deterministic_across_batch_sizes_and_instances(cache, windows):
    a = load_encoder(SPEC, batch_size=4, checkpoint=cache.checkpoint)
    b = load_encoder(SPEC, batch_size=4, checkpoint=cache.checkpoint)
    assert (a.dim, a.sample_rate, a.window_samples) == (512, 48_000, 480_000)
    assert a.space == b.space == f"{SPEC}@{file_sha256(cache.checkpoint)[:12]}"
    ea = a.encode_audio(windows)
    assert ea.shape == (3, 512) and ea.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ea, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(ea, b.encode_audio(windows))  # another instance: identical
    np.testing.assert_array_equal(ea, a.encode_audio(windows))  # run to run: identical
    a.batch_size = 1
    assert np.abs(ea - a.encode_audio(windows)).max() <= 1e-5  # batch 1 vs 4
    with pytest.raises(DiffgapError, match=r"\[n, 480000\]"):
        a.encode_audio(windows[:, :1000])


def test_matches_laion_clap_reference_on_exact_10_s_windows(cache, windows, reference):
    encoder = load_encoder(SPEC, batch_size=4, checkpoint=cache.checkpoint)
    # laion_clap's own path for numpy input (int16 round trip, get_audio_features, get_audio_embedding)
    expected = reference.module.get_audio_embedding_from_data(x=windows)
    assert np.abs(encoder.encode_audio(windows) - expected).max() <= 1e-5
    texts = ["a dog barks in the distance", "rain falls on a tin roof"]
    assert np.abs(encoder.encode_text(texts) - reference.module.get_text_embedding(texts)).max() <= 1e-5
    # exactly 480,000 samples take get_audio_features' deterministic branch: the very inputs we build
    ours = encoder._audio_inputs(windows)
    for window, mine in zip(windows, ours):
        theirs = reference.get_audio_features({}, mine["waveform"].clone(), 480_000, data_truncating="rand_trunc",
                                              data_filling="repeatpad", audio_cfg=encoder.model_cfg["audio_cfg"])
        assert theirs.keys() == mine.keys() and not theirs["longer"].item()
        assert all(torch.equal(theirs[k], mine[k]) for k in mine)


def test_fusion_model_is_deterministic_and_takes_laions_fusion_input(cache, windows, reference):
    encoder = load_encoder(f"{SPEC}+fusion", batch_size=2, checkpoint=cache.fusion_checkpoint)
    assert encoder.space.startswith(f"{SPEC}+fusion@")
    two = windows[:2]
    e2 = encoder.encode_audio(two)
    np.testing.assert_allclose(np.linalg.norm(e2, axis=1), 1.0, atol=1e-5)
    encoder.batch_size = 1
    assert np.abs(e2 - encoder.encode_audio(two)).max() <= 1e-5
    # laion_clap's get_audio_features on a 10-s window: no random chunks, longer=False, 4 x the same log-mel
    for mine in encoder._audio_inputs(two):
        theirs = reference.get_audio_features({}, mine["waveform"].clone(), 480_000, data_truncating="fusion",
                                              data_filling="repeatpad", audio_cfg=encoder.model_cfg["audio_cfg"])
        assert theirs.keys() == mine.keys() and not theirs["longer"].item()
        assert all(torch.equal(theirs[k], mine[k]) for k in mine)
    # a checkpoint of the other kind is refused with the spec to use
    with pytest.raises(DiffgapError, match=r"fusion checkpoint: use laion-clap:HTSAT-tiny\+fusion"):
        load_encoder(SPEC, checkpoint=cache.fusion_checkpoint)
    with pytest.raises(DiffgapError, match="not a fusion checkpoint: use laion-clap:HTSAT-tiny$"):
        load_encoder(f"{SPEC}+fusion", checkpoint=cache.checkpoint)


def test_text_embeddings(cache):
    encoder = load_encoder(SPEC, batch_size=3, checkpoint=cache.checkpoint)
    texts = ["a dog barks", "rain on a tin roof", "a man speaks while birds chirp", "an engine idles"]
    e = encoder.encode_text(texts)
    assert e.shape == (4, 512) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    encoder.batch_size = 1
    assert np.abs(e - encoder.encode_text(texts)).max() <= 1e-5
    with pytest.raises(DiffgapError, match="non-empty"):
        encoder.encode_text(["a dog", "  "])


def test_checkpoint_in_laions_layout_loads(cache):
    raw = torch.load(cache.checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    assert all(k.startswith("module.") for k in raw) and "module.text_branch.embeddings.position_ids" in raw
    state = load_checkpoint(cache.checkpoint)
    assert not any(k.startswith("module.") for k in state)
    encoder = load_encoder(SPEC, checkpoint=cache.checkpoint)  # strict load: every other key fits
    loaded = encoder.model.state_dict()
    assert "text_branch.embeddings.position_ids" not in loaded
    assert torch.equal(loaded["audio_projection.0.weight"], state["audio_projection.0.weight"])


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    class Payload:
        def __init__(self, marker):
            self.marker = str(marker)

        def __reduce__(self):  # unpickling this calls open(marker, "w"): creates the file
            return (open, (self.marker, "w"))

    evil, marker = tmp_path / "evil.pt", tmp_path / "marker"
    torch.save({"state_dict": Payload(marker)}, evil)
    with pytest.raises(DiffgapError, match="evil.pt: refused.*never unpickled"):
        load_encoder(SPEC, checkpoint=evil)
    assert not marker.exists()
    # the payload is live: a plain unpickling would have created the file
    live = tmp_path / "live.pt"
    torch.save({"state_dict": Payload(tmp_path / "proof")}, live)
    torch.load(live, weights_only=False)
    assert (tmp_path / "proof").exists() and not marker.exists()


def test_bad_checkpoints_and_specs_fail_clearly(tmp_path):
    with pytest.raises(DiffgapError, match="nope.pt: no such file.*--checkpoint"):
        load_encoder(SPEC, checkpoint=tmp_path / "nope.pt")
    with pytest.raises(DiffgapError, match="needs --checkpoint"):
        load_encoder(SPEC)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint\n" * 50)
    with pytest.raises(DiffgapError, match="junk.pt: not a PyTorch checkpoint"):
        load_encoder(SPEC, checkpoint=tmp_path / "junk.pt")
    torch.save({"epoch": 3}, tmp_path / "other.pt")
    with pytest.raises(DiffgapError, match="other.pt: not a LAION-CLAP checkpoint"):
        load_encoder(SPEC, checkpoint=tmp_path / "other.pt")
    with pytest.raises(DiffgapError, match="unknown audio model.*HTSAT-base"):
        load_encoder("laion-clap:HTSAT-huge", checkpoint=tmp_path / "other.pt")
    with pytest.raises(DiffgapError, match="only option after"):
        load_encoder("laion-clap:HTSAT-tiny+fast", checkpoint=tmp_path / "other.pt")
    with pytest.raises(DiffgapError, match="--checkpoint is for laion-clap"):
        load_encoder("hf:laion/clap-htsat-unfused", checkpoint=tmp_path / "other.pt")


def test_without_roberta_in_the_cache_it_fails_at_once(laion, tmp_path):
    """No network, empty HF_HOME: one error line saying what to place where, no retries."""
    empty = tmp_path / "empty-hf-home"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")}
    env.update(HF_HOME=str(empty), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    t0 = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "diffgap_search.cli", "embed", str(tmp_path / "clip.wav"), "--encoder", SPEC,
         "--checkpoint", str(laion.checkpoint), "--out", str(tmp_path / "out.parquet")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )
    elapsed = time.perf_counter() - t0
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: laion-clap needs the roberta-base model"), result.stderr
    assert "Hugging Face cache (HF_HOME" in lines[0] and str(empty) in lines[0]
    assert "Retrying" not in result.stderr and elapsed < 120, elapsed  # mostly interpreter and torch start-up


def test_embed_media_and_build_index_with_the_laion_encoder(cache, tmp_path):
    files = [shared_data("audio", "misc", "bell.oga"), shared_data("audio", "misc", "ambi_piano.flac"),
             sorted(shared_data("audio", "esc50").glob("*.wav"))[0]]
    encoder = load_encoder(SPEC, batch_size=2, checkpoint=cache.checkpoint)
    report = embed_media(encoder, files, tmp_path / "clips.parquet", progress=False)
    assert report.embedded == report.rows == 3 and not report.failed
    emb = read_embeddings(tmp_path / "clips.parquet")
    assert emb.space == encoder.space and emb.vectors.shape == (3, 512)
    np.testing.assert_allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=1e-5)

    runner = CliRunner()
    ix = tmp_path / "ix"
    built = runner.invoke(app, ["build-index", *map(str, files), "--encoder", SPEC, "--checkpoint",
                                str(cache.checkpoint), "--out", str(ix)])
    assert built.exit_code == 0, built.output
    from diffgap_search.index import EmbeddingIndex

    index = EmbeddingIndex.load(ix)
    assert len(index) == 3 and index.space == encoder.space
    cached = read_embeddings(tmp_path / "ix.embeddings.parquet")
    assert np.abs(cached.vectors - emb.vectors).max() <= 1e-5
    lonely = runner.invoke(app, ["build-index", "-e", str(tmp_path / "clips.parquet"), "--checkpoint",
                                 str(cache.checkpoint), "--out", str(tmp_path / "ix2")])
    assert lonely.exit_code == 2 and "--checkpoint goes with --encoder" in lonely.stderr
