"""Video: frame sampling, the CLIP video encoder (tiny random weights), video<->audio pairs,
and precomputed features; on the real videos in ../shared/data/video."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pytest
import torch
from typer.testing import CliRunner

from conftest import shared_data
from diffgap_search.audio_io import decode_audio
from diffgap_search.cli import app
from diffgap_search.encoders import load_encoder
from diffgap_search.errors import DiffgapError
from diffgap_search.ingest import embed_media
from diffgap_search.pairs import read_pairs
from diffgap_search.storage import read_embeddings, write_shard
from diffgap_search.video_io import decode_frames
from tiny_models import tiny_clip, tiny_hf_clap

VIDEOS = ("car.mp4", "drum.mp4", "gun.mp4")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture()
def videos(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in VIDEOS:
        shutil.copy(shared_data("video", name), folder / name)
    return folder


def _all_frames(path) -> tuple[np.ndarray, np.ndarray]:
    import av

    with av.open(str(path)) as c:
        frames = [(f.time, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    return np.array([t for t, _ in frames]), np.stack([x for _, x in frames])


def test_the_three_videos_decode_to_uniform_frames_and_audio():
    for name in VIDEOS:
        path = shared_data("video", name)
        frames = decode_frames(path, 8)
        assert frames.rgb.dtype == np.uint8 and frames.rgb.shape[0] == 8 and frames.rgb.shape[-1] == 3
        assert 9.5 < frames.duration_s < 10.5
        # reference: decode every frame; frame i is the first at or after the centre of segment i
        times, every = _all_frames(path)
        centres = times[0] + frames.duration_s * (np.arange(8) + 0.5) / 8
        expected = [int(np.searchsorted(times, c - 1e-9)) for c in centres]
        np.testing.assert_array_equal(frames.rgb, every[expected])
        np.testing.assert_allclose(frames.times_s, times[expected])
        audio = decode_audio(path)
        assert abs(len(audio) / 48_000 - frames.duration_s) < 0.15


def test_more_frames_than_the_clip_has_repeat_in_order():
    path = shared_data("video", "car.mp4")
    times, _ = _all_frames(path)
    frames = decode_frames(path, len(times) + 40)
    assert len(frames.rgb) == len(times) + 40
    assert np.all(np.diff(frames.times_s) >= 0)


def test_clip_encoder_matches_the_transformers_reference(clip_dir):
    """Our torchvision preprocessing + pooling against CLIPImageProcessor + the model called directly."""
    from transformers import CLIPImageProcessor

    enc = load_encoder(f"hf:{clip_dir}")
    assert type(enc).__name__ == "HFClipVideoEncoder" and enc.dim == 24 and enc.space.startswith("clip:")
    frames = decode_frames(shared_data("video", "gun.mp4")).rgb  # 480 x 360: the crop matters
    pixels = CLIPImageProcessor.from_pretrained(clip_dir)(images=list(frames), return_tensors="pt")["pixel_values"]
    np.testing.assert_allclose(enc.prepare(torch.from_numpy(frames)).numpy(), pixels.numpy(), atol=1e-3)
    with torch.no_grad():
        per_frame = torch.nn.functional.normalize(enc.model(pixel_values=pixels).image_embeds, dim=-1)
    expected = torch.nn.functional.normalize(per_frame.mean(0), dim=0).numpy()
    got = enc.encode_video([frames])
    assert got.shape == (1, 24)
    np.testing.assert_allclose(got[0], expected, atol=1e-5)


def test_a_whole_clip_model_checkpoint_loads_its_vision_tower(tmp_path):
    """openai/clip-vit-base-patch32 is a CLIPModel checkpoint; the vision tower and projection must load, not re-init."""
    from transformers import CLIPModel

    folder = tiny_clip(tmp_path / "full", full_model=True)
    enc = load_encoder(f"hf:{folder}")
    frames = decode_frames(shared_data("video", "drum.mp4")).rgb
    full = CLIPModel.from_pretrained(folder).eval()
    with torch.no_grad():
        ref = full.get_image_features(pixel_values=enc.prepare(torch.from_numpy(frames)))
    ref = getattr(ref, "pooler_output", ref)
    ref = torch.nn.functional.normalize(torch.nn.functional.normalize(ref, dim=-1).mean(0), dim=0).numpy()
    np.testing.assert_allclose(enc.encode_video([frames])[0], ref, atol=1e-5)


def test_video_embeddings_are_deterministic_and_broken_files_are_listed(clip_dir, videos, tmp_path):
    (videos / "empty.mp4").write_bytes(b"")
    (videos / "text.mkv").write_bytes(b"not a video\n" * 50)
    (videos / "truncated.mp4").write_bytes((videos / "car.mp4").read_bytes()[:2000])
    a = embed_media(load_encoder(f"hf:{clip_dir}", batch_size=3, num_frames=6), [videos], tmp_path / "a.parquet",
                    modality="video", progress=False)
    b = embed_media(load_encoder(f"hf:{clip_dir}", batch_size=16, num_frames=6), [videos], tmp_path / "b.parquet",
                    modality="video", progress=False)
    assert a.rows == b.rows == 3
    assert {p.rsplit("/", 1)[-1] for p, _ in a.failed} == {"empty.mp4", "text.mkv", "truncated.mp4"}
    ea, eb = read_embeddings(tmp_path / "a.parquet"), read_embeddings(tmp_path / "b.parquet")
    assert ea.modality == "video" and ea.space.startswith("clip:")
    assert np.abs(ea.vectors - eb.vectors).max() <= 1e-5


def test_a_clip_encoder_refuses_audio_and_per_window(clip_dir, videos, tmp_path):
    enc = load_encoder(f"hf:{clip_dir}")
    with pytest.raises(DiffgapError, match="does not embed audio"):
        embed_media(enc, [videos], tmp_path / "x.parquet", modality="audio", progress=False)
    with pytest.raises(DiffgapError, match="--per-window"):
        embed_media(enc, [videos], tmp_path / "x.parquet", modality="video", per_window=True, progress=False)
    assert not (tmp_path / "x.parquet").exists()


def test_a_video_corpus_yields_video_audio_pairs_through_the_cli(clip_dir, videos, tmp_path):
    clap = tiny_hf_clap(tmp_path / "clap")
    runner = CliRunner()
    r = runner.invoke(app, ["embed", "-E", f"hf:{clap}", str(videos), "-o", str(tmp_path / "audio.parquet")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["embed", "-E", f"hf:{clip_dir}", "--modality", "video", "--frames", "4", str(videos),
                            "-o", str(tmp_path / "video.parquet")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["pair", str(tmp_path / "audio.parquet"), str(tmp_path / "video.parquet"),
                            "-o", str(tmp_path / "pairs.parquet")])
    assert r.exit_code == 0, r.output
    assert "3 pairs of 3 clips" in r.output
    pairs = read_pairs(tmp_path / "pairs.parquet")
    audio, video = read_embeddings(tmp_path / "audio.parquet"), read_embeddings(tmp_path / "video.parquet")
    assert (pairs.dim_a, pairs.dim_b) == (16, 24)
    assert pairs.space_a == audio.space and pairs.space_b == video.space and pairs.modality_b == "video"
    # each pair holds the audio track and the frames of the same file
    apath, vpath = audio.metadata.column("path").to_pylist(), video.metadata.column("path").to_pylist()
    for i, p in enumerate(pairs.metadata.column("path").to_pylist()):
        np.testing.assert_array_equal(pairs.a[i], audio.vectors[apath.index(p)])
        np.testing.assert_array_equal(pairs.b[i], video.vectors[vpath.index(p)])
    # a pairs file trains (two steps of the tiny recipe are enough to show the dims line up)
    r = runner.invoke(app, ["train", "--pairs", str(tmp_path / "pairs.parquet"), "--out", str(tmp_path / "model"),
                            "--recipe", "training/tiny.json", "--epochs", "1", "--val-fraction", "0"])
    assert r.exit_code == 0, r.output


def test_pairing_refuses_per_window_audio_and_disjoint_shards(tmp_path):
    x = np.eye(4, dtype=np.float32)
    write_shard(tmp_path / "win.parquet", np.arange(4), x, pa.table({"path": ["a", "a", "b", "c"]}), space="s")
    write_shard(tmp_path / "q.parquet", np.arange(2), x[:2], pa.table({"path": ["x", "y"]}), space="t")
    runner = CliRunner()
    r = runner.invoke(app, ["pair", str(tmp_path / "win.parquet"), str(tmp_path / "q.parquet"), "-o", str(tmp_path / "p.parquet")])
    assert r.exit_code != 0 and "several rows" in r.output and "Traceback" not in r.output
    write_shard(tmp_path / "one.parquet", np.arange(3), x[:3], pa.table({"path": ["a", "b", "c"]}), space="s")
    r = runner.invoke(app, ["pair", str(tmp_path / "one.parquet"), str(tmp_path / "q.parquet"), "-o", str(tmp_path / "p.parquet")])
    assert r.exit_code != 0 and "same files" in r.output
    assert not (tmp_path / "p.parquet").exists()


def test_precomputed_features_line_up_with_media_by_name(videos, tmp_path):
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((4, 12)).astype(np.float32)
    np.save(tmp_path / "cavp.npy", feats)
    (tmp_path / "cavp.csv").write_text("key\ndrum\ncar.mp4\nunrelated\ngun\n")
    enc = load_encoder(f"precomputed:{tmp_path / 'cavp.npy'}")
    assert enc.space == "features:cavp" and enc.dim == 12
    (videos / "orphan.mp4").write_bytes((videos / "car.mp4").read_bytes())
    report = embed_media(enc, [videos], tmp_path / "v.parquet", modality="video", progress=False)
    assert report.rows == 3 and [p.rsplit("/", 1)[-1] for p, _ in report.failed] == ["orphan.mp4"]
    got = read_embeddings(tmp_path / "v.parquet")
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    names = [p.rsplit("/", 1)[-1] for p in got.metadata.column("path").to_pylist()]
    assert names == ["car.mp4", "drum.mp4", "gun.mp4"]
    np.testing.assert_allclose(got.vectors, unit[[1, 0, 3]], atol=1e-6)
    # a .npy without its keys, and duplicate keys, are refused with what to do
    np.save(tmp_path / "bare.npy", feats)
    with pytest.raises(DiffgapError, match="bare.csv"):
        load_encoder(f"precomputed:{tmp_path / 'bare.npy'}")
    (tmp_path / "cavp.csv").write_text("key\ndrum\ndrum\nx\ny\n")
    with pytest.raises(DiffgapError, match="appears twice"):
        load_encoder(f"precomputed:{tmp_path / 'cavp.npy'}")


def test_missing_clip_weights_fail_at_once_with_what_to_do(tmp_path, monkeypatch):
    import time

    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    runner = CliRunner()
    t0 = time.perf_counter()
    r = runner.invoke(app, ["embed", "-E", "hf:openai/clip-vit-base-patch32", "--modality", "video",
                            str(tmp_path), "-o", str(tmp_path / "v.parquet")])
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "models--openai--clip-vit-base-patch32" in r.output and "hf download openai/clip-vit-base-patch32" in r.output
    assert time.perf_counter() - t0 < 20  # no network retries
