"""Embedding media and captions: determinism, resume, the error list, the CLI."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import shared_data
from diffgap_search.cli import app
from diffgap_search.encoders import load_encoder
from diffgap_search.errors import DiffgapError
from diffgap_search.ingest import embed_captions, embed_media
from diffgap_search.storage import read_embeddings
from tiny_models import tiny_hf_clap


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory):
    return tiny_hf_clap(tmp_path_factory.mktemp("tiny-clap"))


@pytest.fixture()
def media(tmp_path):
    """Real audio (a few formats) plus broken files made here."""
    folder = tmp_path / "media"
    folder.mkdir()
    misc = shared_data("audio", "misc")
    for name in ("bell.oga", "ambi_piano.flac", "drum_roll.flac", "camera-shutter.oga"):
        shutil.copy(misc / name, folder / name)
    for wav in sorted(shared_data("audio", "esc50").glob("*.wav"))[:3]:
        shutil.copy(wav, folder / wav.name)
    (folder / "empty.wav").write_bytes(b"")
    (folder / "text.mp3").write_bytes(b"not audio\n" * 100)
    (folder / "truncated.flac").write_bytes((misc / "ambi_piano.flac").read_bytes()[:300])
    (folder / "notes.txt").write_text("ignored: not an audio extension")
    return folder


def test_embedding_is_deterministic_across_runs_and_batch_sizes(clap_dir, media, tmp_path):
    a = embed_media(load_encoder(f"hf:{clap_dir}", batch_size=8), [media], tmp_path / "a.parquet", progress=False)
    b = embed_media(load_encoder(f"hf:{clap_dir}", batch_size=1), [media], tmp_path / "b.parquet", progress=False)
    assert a.rows == b.rows == 7 and a.embedded == 7
    ea, eb = read_embeddings(tmp_path / "a.parquet"), read_embeddings(tmp_path / "b.parquet")
    assert np.abs(ea.vectors - eb.vectors).max() <= 1e-5
    assert ea.metadata.column("path").to_pylist() == sorted(ea.metadata.column("path").to_pylist())
    assert list(ea.ids) == list(range(7))
    failed = dict(a.failed)
    assert set(map(lambda p: p.rsplit("/", 1)[-1], failed)) == {"empty.wav", "text.mp3", "truncated.flac"}
    assert (tmp_path / "a.errors.csv").read_text().count("\n") == 4  # header + 3


def test_a_killed_run_resumes_to_the_same_shard(clap_dir, media, tmp_path):
    encoder = load_encoder(f"hf:{clap_dir}")
    whole = embed_media(encoder, [media], tmp_path / "whole.parquet", progress=False)

    class Interrupting:
        """The real encoder, interrupted (as by Ctrl-C) after three files."""

        def __init__(self, inner, calls):
            self.inner, self.calls = inner, calls
            self.space, self.sample_rate, self.window_samples = inner.space, inner.sample_rate, inner.window_samples
            self.dim, self.modalities, self.precomputed = inner.dim, inner.modalities, inner.precomputed

        def encode_audio(self, windows):
            if self.calls == 0:
                raise KeyboardInterrupt
            self.calls -= 1
            return self.inner.encode_audio(windows)

    out = tmp_path / "resumed.parquet"
    with pytest.raises(KeyboardInterrupt):
        embed_media(Interrupting(encoder, 3), [media], out, flush_every=1, progress=False)
    assert not out.exists()  # nothing final yet, only parts
    again = embed_media(encoder, [media], out, progress=False)
    assert again.skipped == 3 and again.embedded == 4
    x, y = read_embeddings(tmp_path / "whole.parquet"), read_embeddings(out)
    assert x.metadata.column("path").to_pylist() == y.metadata.column("path").to_pylist()
    np.testing.assert_array_equal(x.vectors, y.vectors)
    np.testing.assert_array_equal(x.ids, y.ids)
    third = embed_media(encoder, [media], out, progress=False)
    assert third.embedded == 0 and third.skipped == 7 and third.rows == whole.rows
    # and the index built from the resumed shard answers exactly as the uninterrupted one
    from diffgap_search.index import EmbeddingIndex

    a = EmbeddingIndex.build([tmp_path / "whole.parquet"], tmp_path / "ix-whole", index_type="flat", device="cpu")
    b = EmbeddingIndex.build([out], tmp_path / "ix-resumed", index_type="flat", device="cpu")
    ra, rb = a.search(x.vectors, k=7), b.search(x.vectors, k=7)
    np.testing.assert_array_equal(ra.ids, rb.ids)
    np.testing.assert_array_equal(ra.scores, rb.scores)
    assert [r["path"] for r in ra.rows(0)] == [r["path"] for r in rb.rows(0)]


def test_per_window_rows_and_video_tracks(clap_dir, tmp_path):
    encoder = load_encoder(f"hf:{clap_dir}")
    videos = shared_data("video")
    report = embed_media(encoder, [videos], tmp_path / "v.parquet", per_window=True, progress=False)
    emb = read_embeddings(tmp_path / "v.parquet")
    durations = emb.metadata.column("duration_s").to_pylist()
    starts = emb.metadata.column("start_s").to_pylist()
    assert report.embedded == 3 and report.rows == len(emb) >= 3
    assert all(s < d for s, d in zip(starts, durations))


def test_captions_and_offline_errors(clap_dir, tmp_path):
    encoder = load_encoder(f"hf:{clap_dir}")
    (tmp_path / "caps.txt").write_text("a dog barks\n\nrain on a tin roof\n")
    report = embed_captions(encoder, [tmp_path / "caps.txt"], tmp_path / "t.parquet", progress=False)
    emb = read_embeddings(tmp_path / "t.parquet")
    assert report.rows == 2 and emb.modality == "text" and emb.space == encoder.space
    with pytest.raises(DiffgapError, match="Hugging Face cache"):
        load_encoder("hf:laion/clap-htsat-unfused")
    with pytest.raises(DiffgapError, match="unknown"):
        load_encoder("nope:thing")


def test_embed_cli_reports_failures_and_builds_an_index(clap_dir, media, tmp_path):
    runner = CliRunner()
    out = tmp_path / "clips.parquet"
    result = runner.invoke(app, ["embed", str(media), "--encoder", f"hf:{clap_dir}", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "7 rows" in result.stdout and "3 failed" in result.stdout
    assert "failed: " in result.stderr and "Traceback" not in result.output
    built = runner.invoke(app, ["build-index", "-e", str(out), "--out", str(tmp_path / "ix")])
    assert built.exit_code == 0, built.output
    bad = runner.invoke(app, ["embed", str(media), "--encoder", "hf:/no/such/model", "--out", str(out)])
    assert bad.exit_code == 2 and bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1


def test_build_index_straight_from_media(clap_dir, media, tmp_path):
    runner = CliRunner()
    ix = tmp_path / "ix"
    result = runner.invoke(app, ["build-index", str(media), "--encoder", f"hf:{clap_dir}", "--out", str(ix)])
    assert result.exit_code == 0, result.output
    assert "built" in result.stdout and "3 failed" in result.stderr
    from diffgap_search.index import EmbeddingIndex

    index = EmbeddingIndex.load(ix)
    assert len(index) == 7 and index.space.startswith("clap:")
    again = runner.invoke(app, ["build-index", str(media), "--encoder", f"hf:{clap_dir}", "--out", str(ix)])
    assert "7 cached" in again.stderr or "0 files" in again.stderr
    neither = runner.invoke(app, ["build-index", "--out", str(ix)])
    assert neither.exit_code == 2 and neither.stderr.startswith("error: ")
