"""Dataset adapters and `prepare`: the real manifests, media naming, pairs from media and from embeddings, bad input."""

from __future__ import annotations

import csv
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from conftest import shared_data, unit_rows
from diffgap_search.audio_io import AUDIO_EXTENSIONS, VIDEO_EXTENSIONS, clip_windows, decode_audio, pool_windows
from diffgap_search.cli import app
from diffgap_search.datasets import match_media, read_audiocaps, read_clotho, read_manifest, read_vggsound
from diffgap_search.encoders import load_encoder
from diffgap_search.errors import DiffgapError
from diffgap_search.pairs import read_pairs
from diffgap_search.storage import write_shard
from diffgap_search.video_io import decode_frames
from tiny_models import tiny_clip, tiny_hf_clap

runner = CliRunner()
MEDIA = AUDIO_EXTENSIONS | VIDEO_EXTENSIONS


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def manifest(name: str):
    return shared_data("manifests", name)


def csv_rows(path, header=True):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh)) if header else list(csv.reader(fh))


# ---------------------------------------------------------------------------
# the real manifests
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name, clips", [("audiocaps_test.csv", 975), ("audiocaps_val.csv", 495)])
def test_audiocaps_manifests_give_clips_with_five_captions_each(name, clips):
    m = read_audiocaps(manifest(name), split="test")
    rows = csv_rows(manifest(name))
    assert (len(m), m.rows, m.captions) == (clips, 5 * clips, 5 * clips) == (clips, len(rows), len(rows))
    assert Counter(len(c.captions) for c in m.clips) == {5: clips}
    assert len({c.clip_id for c in m.clips}) == clips and {c.split for c in m.clips} == {"test"}
    # every row lands in its clip, captions and ids in file order
    first = m.clips[0]
    mine = [r for r in rows if (r["youtube_id"], r["start_time"]) == (rows[0]["youtube_id"], rows[0]["start_time"])]
    assert first.clip_id == f"{rows[0]['youtube_id']}_{rows[0]['start_time']}"
    assert first.captions == tuple(r["caption"] for r in mine) and first.caption_ids == tuple(r["audiocap_id"] for r in mine)
    assert sorted(i for c in m.clips for i in c.caption_ids) == sorted(r["audiocap_id"] for r in rows)


def test_clotho_eval_manifest_gives_1045_clips():
    m = read_clotho(manifest("clotho_eval.csv"))
    rows = csv_rows(manifest("clotho_eval.csv"))
    assert len(m) == 1045 == len(rows) and m.captions == 5 * 1045
    assert [c.clip_id for c in m.clips] == [r["file_name"] for r in rows]
    assert m.clips[0].captions == tuple(rows[0][f"caption_{i}"] for i in range(1, 6))
    assert m.clips[0].split is None


def test_vggsound_test_list_gives_15446_labelled_clips():
    m = read_vggsound(manifest("vggsound_test.csv"), split="test")
    rows = csv_rows(manifest("vggsound_test.csv"), header=False)
    assert len(m) == 15_446 == len(rows) and m.duplicates == 0
    assert [c.clip_id + ".mp4" for c in m.clips] == [r[0] for r in rows]
    assert [c.label for c in m.clips] == [r[1] for r in rows]
    assert len({c.label for c in m.clips}) == 309 and {c.split for c in m.clips} == {"test"}
    assert m.clips[0].texts == (rows[0][1],)


def test_full_vggsound_csv_filters_by_split(tmp_path):
    path = tmp_path / "vggsound.csv"
    path.write_text("---g-f_I2yQ,1,people marching,test\n"
                    "--0PQM4-hqg,30,waterfall burbling,train\n"
                    '-EQByFLFqig,0,"male speech, man speaking",test\n'
                    "-EQByFLFqig,0,\"male speech, man speaking\",test\n"  # a repeated row
                    "-EQByFLFqig,40,dog barking,train\n")
    test = read_manifest("vggsound", path, split="test")
    assert [c.clip_id for c in test.clips] == ["---g-f_I2yQ_000001", "-EQByFLFqig_000000"]
    assert [c.label for c in test.clips] == ["people marching", "male speech, man speaking"] and test.duplicates == 1
    assert test.clips[0].names[:2] == ("---g-f_I2yQ_000001", "---g-f_I2yQ_1")
    everything = read_manifest("vggsound", path)
    assert [c.split for c in everything.clips] == ["test", "train", "test", "train"]
    # a YouTube id with two clips is never matched by the bare id
    assert "-EQByFLFqig" not in everything.clips[2].names and "--0PQM4-hqg" in everything.clips[1].names
    with pytest.raises(DiffgapError, match="no row of split 'val'"):
        read_manifest("vggsound", path, split="val")


def test_media_names_follow_each_datasets_conventions(tmp_path):
    ac = read_audiocaps(manifest("audiocaps_test.csv")).clips[:6]
    clotho = read_clotho(manifest("clotho_eval.csv")).clips[:2]
    vgg = read_vggsound(manifest("vggsound_test.csv")).clips[:3]
    y0, y1, y2, y3, y4 = (c.fields["youtube_id"] for c in ac[:5])
    s0, s3 = int(ac[0].fields["start_s"]), int(ac[3].fields["start_s"])
    names = {
        ac[0]: f"sub/{y0}_{s0}.wav", ac[1]: f"Y{y1}.flac", ac[2]: f"{ac[2].caption_ids[3]}.wav",
        ac[3]: f"Y{y3}_{s3}.000_{s3 + 10}.000.wav", ac[4]: f"{y4}.mp4",
        clotho[0]: clotho[0].clip_id, clotho[1]: clotho[1].clip_id.replace(".wav", ".flac"),
        vgg[0]: vgg[0].clip_id + ".mp4", vgg[1]: vgg[1].clip_id + ".wav",
    }
    for name in names.values():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not media")
    (tmp_path / (vgg[2].clip_id + ".txt")).write_text("not media either")
    match = match_media(ac + clotho + vgg, tmp_path, MEDIA)
    assert {cid: p.relative_to(tmp_path).as_posix() for cid, p in match.found.items()} == {c.clip_id: n for c, n in names.items()}
    assert set(match.missing) == {ac[5].clip_id, vgg[2].clip_id}
    assert f"{ac[5].clip_id}.*" in match.missing[ac[5].clip_id]
    # the video side looks at video files only
    assert set(match_media(vgg, tmp_path, VIDEO_EXTENSIONS).found) == {vgg[0].clip_id}


# ---------------------------------------------------------------------------
# prepare from media
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory):
    return tiny_hf_clap(tmp_path_factory.mktemp("tiny-clap"))


def reference_audio(encoder, path) -> np.ndarray:
    """A clip's audio embedding by calling the encoder directly: decode, 10 s windows, encode, mean, normalize."""
    w = clip_windows(decode_audio(path, encoder.sample_rate), encoder.sample_rate)
    return pool_windows(encoder.encode_audio(w.audio), [len(w.audio)])[0]


def test_prepare_audiocaps_from_a_media_folder(clap_dir, tmp_path):
    """Four clips of the real test manifest under four naming conventions, one unreadable, 970 absent."""
    clips = read_audiocaps(manifest("audiocaps_test.csv")).clips
    esc = sorted(shared_data("audio", "esc50").glob("*.wav"))
    media = tmp_path / "media"
    media.mkdir()
    c = clips
    files = {
        c[0].clip_id: media / f"{c[0].clip_id}.wav",
        c[1].clip_id: media / f"Y{c[1].fields['youtube_id']}.wav",
        c[2].clip_id: media / f"{c[2].caption_ids[0]}.wav",
        c[3].clip_id: media / f"Y{c[3].clip_id}.wav",
    }
    for i, link in enumerate(files.values()):
        link.symlink_to(esc[i])
    (media / f"{c[4].clip_id}.wav").write_bytes(b"")  # found but unreadable
    out = tmp_path / "pairs" / "test.parquet"
    args = ["prepare", "audiocaps", "--manifest", manifest("audiocaps_test.csv"), "--audio-dir", media,
            "--audio-encoder", f"hf:{clap_dir}", "--split", "test", "--out", out, "--device", "cpu"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "20 pairs of 4 clips" in result.output and "971 clips left out (971 without audio)" in result.output

    pairs = read_pairs(out)
    assert len(pairs) == 20 and pairs.group.max() + 1 == 4 and set(pairs.split) == {"test"}
    assert list(pairs.group_id) == [clip.clip_id for clip in c[:4] for _ in range(5)]
    assert pairs.metadata.column("caption").to_pylist() == [t for clip in c[:4] for t in clip.captions]
    assert pairs.metadata.column("caption_id").to_pylist() == [i for clip in c[:4] for i in clip.caption_ids]
    assert pairs.modality_b == "text" and pairs.space_a == pairs.space_b

    encoder = load_encoder(f"hf:{clap_dir}")
    expected_a = np.stack([reference_audio(encoder, esc[i]) for i in range(4)])
    np.testing.assert_allclose(pairs.a, np.repeat(expected_a, 5, axis=0), atol=1e-5)
    expected_b = encoder.encode_text([t for clip in c[:4] for t in clip.captions])
    np.testing.assert_allclose(pairs.b, expected_b, atol=1e-5)
    assert len({tuple(row) for row in pairs.a.round(5)}) == 4  # four different clips, not one repeated

    missing = csv_rows(out.parent / "test.missing.csv")
    assert len(missing) == 971 and {m["side"] for m in missing} == {"audio"}
    assert [m["clip_id"] for m in missing] == [clip.clip_id for clip in c[4:]]
    assert "could not be read" in missing[0]["reason"] and "no media file" in missing[1]["reason"]
    assert (out.parent / "test.audio.parquet").exists()

    # a re-run reuses the cached audio embeddings and writes the same file
    again = invoke(*args[:-4], "--out", tmp_path / "pairs" / "test.parquet", "--device", "cpu")
    assert again.exit_code == 0, again.output
    np.testing.assert_array_equal(read_pairs(out).a, pairs.a)


def test_prepare_vggsound_videos_pairs_audio_tracks_with_frames(clap_dir, tmp_path_factory, tmp_path):
    clip_dir = tiny_clip(tmp_path_factory.mktemp("tiny-clip"))
    clips = read_vggsound(manifest("vggsound_test.csv")).clips[:3]
    videos = tmp_path / "videos"
    videos.mkdir()
    sources = [shared_data("video", "drum.mp4"), shared_data("video", "car.mp4")]
    for clip, source in zip(clips, sources):
        (videos / f"{clip.clip_id}.mp4").symlink_to(source)
    out = tmp_path / "vgg.parquet"
    result = invoke("prepare", "vggsound", "--manifest", manifest("vggsound_test.csv"), "--audio-dir", videos,
                    "--audio-encoder", f"hf:{clap_dir}", "--video-encoder", f"hf:{clip_dir}", "--frames", 4,
                    "--split", "test", "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "2 pairs of 2 clips" in result.output and "15444 clips left out" in result.output
    pairs = read_pairs(out)
    assert list(pairs.group_id) == [c.clip_id for c in clips[:2]] and pairs.modality_b == "video"
    assert pairs.metadata.column("label").to_pylist() == [c.label for c in clips[:2]]
    assert (pairs.dim_a, pairs.dim_b) == (16, 24)
    audio_enc, video_enc = load_encoder(f"hf:{clap_dir}"), load_encoder(f"hf:{clip_dir}", num_frames=4)
    np.testing.assert_allclose(pairs.a, np.stack([reference_audio(audio_enc, s) for s in sources]), atol=1e-5)
    frames = [decode_frames(s, 4).rgb for s in sources]
    np.testing.assert_allclose(pairs.b, np.concatenate([video_enc.encode_video([f]) for f in frames]), atol=1e-5)

    # audio from the same folder (cached by the run above), video from features made elsewhere (CAVP-like)
    np.save(tmp_path / "cavp.npy", unit_rows(3, 12, seed=7))
    (tmp_path / "cavp.csv").write_text("video_id\n" + "".join(f"{c.clip_id}\n" for c in clips))
    (tmp_path / "videos" / f"{clips[0].clip_id}.mp4").unlink()
    result = invoke("prepare", "vggsound", "--manifest", manifest("vggsound_test.csv"), "--audio-dir", videos,
                    "--audio-encoder", f"hf:{clap_dir}", "--query-embeddings", tmp_path / "cavp.npy", "--out", out)
    assert result.exit_code == 0, result.output
    assert "1 pairs of 1 clips" in result.output and "(15445 without audio)" in result.output
    mixed = read_pairs(out)
    np.testing.assert_allclose(mixed.a, pairs.a[1:], atol=1e-6)
    np.testing.assert_allclose(mixed.b, unit_rows(3, 12, seed=7)[1:2], atol=1e-6)


# ---------------------------------------------------------------------------
# prepare from embeddings made before
# ---------------------------------------------------------------------------


def test_prepare_from_precomputed_shards(tmp_path):
    """An audio shard from `embed` (full paths) and a caption shard from `embed --modality text`."""
    clips = read_audiocaps(manifest("audiocaps_val.csv")).clips
    have = clips[:6]
    x_audio = unit_rows(len(have), 16, seed=1)
    audio = tmp_path / "audio.parquet"
    order = [3, 0, 5, 1, 4, 2]  # shard rows sorted by path, not in manifest order
    write_shard(audio, np.arange(6), x_audio[order],
                pa.table({"path": [f"/data/audiocaps/val/Y{have[i].fields['youtube_id']}.wav" for i in order]}),
                space="clap-test", modality="audio")
    captions = [t for clip in clips[:5] for t in clip.captions]
    captions = [t for t in captions if t not in clips[4].captions[:2]]  # clip 4 keeps 3 of its 5 captions
    captions = list(dict.fromkeys(captions))  # a caption written twice in AudioCaps (same text, same embedding)
    x_text = unit_rows(len(captions), 16, seed=2)
    text = tmp_path / "captions.parquet"
    write_shard(text, np.arange(len(captions)), x_text, pa.table({"caption": captions}), space="clap-test", modality="text")

    out = tmp_path / "val.parquet"
    result = invoke("prepare", "audiocaps", "--manifest", manifest("audiocaps_val.csv"), "--audio-embeddings", audio,
                    "--query-embeddings", text, "--split", "val", "--out", out)
    assert result.exit_code == 0, result.output
    assert "23 pairs of 5 clips" in result.output
    pairs = read_pairs(out)
    assert list(dict.fromkeys(pairs.group_id)) == [c.clip_id for c in clips[:5]] and set(pairs.split) == {"val"}
    row_of = {t: i for i, t in enumerate(captions)}
    np.testing.assert_allclose(pairs.b, x_text[[row_of[t] for t in pairs.metadata.column("caption").to_pylist()]], atol=1e-6)
    clip_row = {c.clip_id: i for i, c in enumerate(have)}
    np.testing.assert_allclose(pairs.a, x_audio[[clip_row[g] for g in pairs.group_id]], atol=1e-6)
    assert pairs.space_a == pairs.space_b == "clap-test"
    missing = {(m["clip_id"], m["side"]): m["reason"] for m in csv_rows(tmp_path / "val.missing.csv")}
    assert "2 of its 5 captions" in missing[(clips[4].clip_id, "text")]
    assert "none of its 5 captions" in missing[(clips[5].clip_id, "text")]
    assert sum(side == "audio" for _, side in missing) == len(clips) - 6


def test_prepare_from_npy_features_keyed_by_file_name(tmp_path):
    """VGGSound: CLAP audio and CAVP-like video features as .npy files with their keys in CSVs beside them."""
    clips = read_vggsound(manifest("vggsound_test.csv")).clips[:5]
    np.save(tmp_path / "audio.npy", unit_rows(4, 16, seed=3))
    (tmp_path / "audio.csv").write_text("key\n" + "".join(f"{c.clip_id}\n" for c in clips[:4]))
    np.save(tmp_path / "cavp.npy", unit_rows(5, 24, seed=4))
    (tmp_path / "cavp.csv").write_text("file_name\n" + "".join(f"{c.clip_id}.mp4\n" for c in clips[::-1]))
    out = tmp_path / "vgg.parquet"
    result = invoke("prepare", "vggsound", "--manifest", manifest("vggsound_test.csv"), "--audio-embeddings",
                    tmp_path / "audio.npy", "--query-embeddings", tmp_path / "cavp.npy", "--out", out)
    assert result.exit_code == 0, result.output
    pairs = read_pairs(out)
    assert list(pairs.group_id) == [c.clip_id for c in clips[:4]] and pairs.split is None
    np.testing.assert_allclose(pairs.a, unit_rows(4, 16, seed=3), atol=1e-6)
    np.testing.assert_allclose(pairs.b, unit_rows(5, 24, seed=4)[[4, 3, 2, 1]], atol=1e-6)
    assert pairs.modality_b == "video" and pairs.space_b == "features:cavp"


def test_caption_embeddings_keyed_by_audiocap_id(tmp_path):
    clips = read_audiocaps(manifest("audiocaps_test.csv")).clips[:2]
    np.save(tmp_path / "audio.npy", unit_rows(2, 8, seed=5))
    (tmp_path / "audio.csv").write_text("key\n" + "".join(f"{c.clip_id}\n" for c in clips))
    ids = [i for c in clips for i in c.caption_ids]
    np.save(tmp_path / "text.npy", unit_rows(10, 8, seed=6))
    (tmp_path / "text.csv").write_text("key\n" + "\n".join(ids[::-1]) + "\n")
    out = tmp_path / "p.parquet"
    result = invoke("prepare", "audiocaps", "--manifest", manifest("audiocaps_test.csv"), "--audio-embeddings",
                    tmp_path / "audio.npy", "--query-embeddings", tmp_path / "text.npy", "--out", out)
    assert result.exit_code == 0, result.output
    pairs = read_pairs(out)
    assert pairs.metadata.column("caption_id").to_pylist() == ids
    np.testing.assert_allclose(pairs.b, unit_rows(10, 8, seed=6)[::-1], atol=1e-6)


# ---------------------------------------------------------------------------
# bad input: one line, exit 2, no traceback
# ---------------------------------------------------------------------------


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    np.save(tmp_path / "a.npy", unit_rows(3, 8))
    (tmp_path / "a.csv").write_text("key\nx\ny\nz\n")
    (tmp_path / "empty").mkdir()
    out = ["--out", tmp_path / "p.parquet"]
    emb = ["--audio-embeddings", tmp_path / "a.npy"]
    cases = [
        (["audiocaps", "--manifest", tmp_path / "nope.csv", *emb, *out], "no such manifest file"),
        (["audiocaps", "--manifest", manifest("clotho_eval.csv"), *emb, *out], "looks like a clotho manifest"),
        (["clotho", "--manifest", manifest("audiocaps_val.csv"), *emb, *out], "lacks file_name"),
        (["vggsound", "--manifest", manifest("clotho_eval.csv"), *emb, "--query-embeddings", tmp_path / "a.npy", *out],
         "has 2 columns"),
        (["clotho", "--manifest", manifest("clotho_eval.csv"), *out], "--audio-dir DIR --audio-encoder SPEC, or as --audio-embeddings"),
        (["vggsound", "--manifest", manifest("vggsound_test.csv"), *emb, "--audio-dir", tmp_path, "--audio-encoder", "hf:x", *out],
         "not both"),
        (["vggsound", "--manifest", manifest("vggsound_test.csv"), "--audio-dir", tmp_path, "--audio-encoder", "hf:x", *out],
         "VGGSound queries are videos"),
        (["clotho", "--manifest", manifest("clotho_eval.csv"), *emb, "--query-embeddings", tmp_path / "a.npy", *out],
         "none of the 1045 clips"),
        (["clotho", "--manifest", manifest("clotho_eval.csv"), *emb, "--query-embeddings", tmp_path / "a.npy",
          "--out", tmp_path / "p.csv"], "ending in .parquet"),
    ]
    for argv, message in cases:
        result = invoke("prepare", *argv)
        assert result.exit_code == 2, (argv, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.output
        assert message in lines[0], (message, lines[0])
        assert "Traceback" not in result.output
    assert not (tmp_path / "p.parquet").exists()


def test_prepare_has_help_with_examples():
    result = invoke("prepare", "--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for dataset in ("audiocaps", "clotho", "vggsound"):
        assert f"Example: diffgap-search prepare {dataset}" in text


def test_readme_prepare_commands_use_real_options(tmp_path, monkeypatch):
    """Every `prepare` line of the README parses; it then stops at its (absent) manifest with one error line."""
    import re
    import shlex

    from conftest import REPO

    readme = (REPO / "README.md").read_text().replace("\\\n", " ")
    clap = re.search(r'^CLAP="([^"]*)"', readme, re.M).group(1)
    commands = [line.replace("$CLAP", clap) for line in readme.splitlines() if line.startswith("diffgap-search prepare ")]
    assert len(commands) >= 10
    monkeypatch.chdir(tmp_path)
    for command in commands:
        result = invoke(*shlex.split(command)[1:])
        assert result.exit_code == 2 and result.output.startswith("error: ") and "no such manifest file" in result.output, (command, result.output)
