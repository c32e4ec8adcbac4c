"""The generation bridge: `bridge` (audio-space conditions in npy/parquet/pt) and `generate` (AudioLDM through
the bridge), on a tiny random AudioLDM pipeline loaded through from_pretrained, against diffusers called directly."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from typer.testing import CliRunner

from conftest import assert_one_error_line, shared_data, unit_rows
from diffgap_search.cli import app
from diffgap_search.diffusion.train import TrainConfig, load_recipe, train
from diffgap_search.diffusion.translator import Translator
from diffgap_search.pairs import write_pairs
from diffgap_search.storage import write_shard
from diffgap_search.synthetic import GapConfig, make_pairs
from tiny_models import tiny_audioldm, tiny_clip, tiny_hf_clap

REPO = Path(__file__).resolve().parents[1]
P = 16  # CLAP projection dim of the tiny pipeline and the tiny CLAP; the matching translator's two dims
WIDE = 24  # the other translator's dims (the tiny CLIP's projection): does not fit the pipeline
RATE = 16_000  # the tiny vocoder's sample rate

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def ok(result):
    assert result.exit_code == 0, (result.output, result.stderr, repr(result.exception))
    return result


def _train(root: Path, name: str, dim_a: int, dim_b: int, n: int, steps: int) -> Path:
    chunk = make_pairs(n, GapConfig(dim_a=dim_a, dim_b=dim_b))
    pairs = write_pairs(root / f"{name}.parquet", chunk.a, chunk.b)
    config = TrainConfig.from_dict({**load_recipe(REPO / "training" / "tiny.json"), "max_steps": steps, "epochs": 10})
    train(pairs, root / name, config, progress=False, log=lambda *_: None)
    return root / name


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("bridge")
    model = _train(root, "model", P, P, 400, 30)  # text (P) -> audio (P), like CLAP 512 -> 512
    wide = _train(root, "wide", WIDE, WIDE, 200, 5)
    queries = root / "queries.parquet"
    write_shard(queries, np.arange(1000, 1006), unit_rows(6, P, seed=3), pa.table({"caption": [f"caption {i}" for i in range(6)]}))
    return {"root": root, "model": model, "wide": wide, "queries": queries, "pipeline": tiny_audioldm(root / "audioldm"),
            "clap": tiny_hf_clap(root / "clap"), "clip": tiny_clip(root / "clip")}  # CLIP projection: WIDE


@pytest.mark.parametrize("command", ["bridge", "generate"])
def test_help_has_an_example(command):
    result = ok(invoke(command, "--help"))
    assert "Example: diffgap-search " + command in " ".join(result.output.split())


# ---------------------------------------------------------------------------
# bridge
# ---------------------------------------------------------------------------

# Reads the three layouts with numpy/json, pyarrow and torch while `import diffgap_search` is impossible.
LOAD_WITHOUT_PACKAGE = r"""
import json, sys
sys.modules["diffgap_search"] = None  # any import of our package now fails
import numpy as np, pyarrow.parquet as pq, torch
npy, pqt, pt = map(__import__("pathlib").Path, sys.argv[1:4])
side = json.loads(npy.with_suffix(".json").read_text())
x = np.load(npy.parent / side["embeddings"], allow_pickle=False)
t = pq.read_table(pqt)
emb = t.column("embedding").combine_chunks()
d = emb.type.list_size
meta = json.loads(t.schema.metadata[b"diffgap.conditions"])
blob = torch.load(pt, weights_only=True)
print(json.dumps({
    "npy": {"x": x.tolist(), "dtype": str(x.dtype), "ids": side["ids"], "captions": side["captions"], "settings": side["settings"],
            "shape": side["shape"]},
    "parquet": {"x": emb.flatten().to_numpy().reshape(-1, d).tolist(), "ids": t.column("id").to_pylist(),
                "captions": t.column("caption").to_pylist(), "settings": meta["settings"], "types": [str(f.type) for f in t.schema]},
    "pt": {"x": blob["embeddings"].tolist(), "dtype": str(blob["embeddings"].dtype), "ids": blob["ids"].tolist(),
           "captions": blob["captions"], "settings": blob["settings"], "format": blob["format"]},
}))
"""


def test_bridge_files_load_without_our_package_and_equal_translate(world, tmp_path):
    files = {fmt: tmp_path / f"conditions.{fmt}" for fmt in ("npy", "parquet", "pt")}
    for fmt, out in files.items():
        result = ok(invoke("bridge", "--model", world["model"], "--embeddings", world["queries"], "--out", out,
                           "--steps", 3, "--samples", 2, "--guidance", 1.5, "--seed", 7, "--device", "cpu"))
        assert "bridged 6 conditions" in result.output and f"dim {P}" in result.output
    sidecar = json.loads((tmp_path / "conditions.json").read_text())
    assert sidecar["sha256"] == hashlib.sha256(files["npy"].read_bytes()).hexdigest()  # names the matrix it belongs to
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["conditions.json", *(f.name for f in files.values())])
    proc = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_PACKAGE, *map(str, files.values())],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = json.loads(proc.stdout)

    translator = Translator.load(world["model"])
    expected = translator.translate(unit_rows(6, P, seed=3), "to-audio", steps=3, samples=2, guidance=1.5,
                                    generator=torch.Generator().manual_seed(7))
    for fmt, got in loaded.items():
        np.testing.assert_array_equal(np.asarray(got["x"], np.float32), expected, err_msg=fmt)
        assert got["ids"] == list(range(1000, 1006)), fmt
        assert got["captions"] == [f"caption {i}" for i in range(6)], fmt
        s = got["settings"]
        assert (s["steps"], s["samples"], s["guidance"], s["seed"], s["direction"], s["dim"]) == (3, 2, 1.5, 7, "to-audio", P), fmt
    assert loaded["npy"]["dtype"] == "float32" and loaded["npy"]["shape"] == [6, P]
    assert loaded["pt"]["dtype"] == "torch.float32" and loaded["pt"]["format"] == "diffgap-conditions"
    assert loaded["parquet"]["types"] == ["int64", "string", f"fixed_size_list<element: float>[{P}]"]


def test_bridge_texts_are_encoded_as_query_encodes_them(world, tmp_path):
    from diffgap_search.encoders import load_encoder

    texts_file = tmp_path / "texts.txt"
    texts_file.write_text("rain on a tin roof\n\nbirds sing at dawn\n")
    out = tmp_path / "texts.pt"
    ok(invoke("bridge", "--model", world["model"], "--encoder", f"hf:{world['clap']}", "--text", "a dog barks",
              "--texts-file", texts_file, "--out", out, "--seed", 3, "--device", "cpu"))
    blob = torch.load(out, weights_only=True)
    texts = ["a dog barks", "rain on a tin roof", "birds sing at dawn"]
    assert blob["captions"] == texts and blob["ids"].tolist() == [0, 1, 2]
    encoded = load_encoder(f"hf:{world['clap']}").encode_text(texts)
    # no --steps/--samples/--guidance: the S, K, w the translator's validation used at train time (stored in config.json)
    translator = Translator.load(world["model"])
    assert vars(translator.sampling) == {"steps": 5, "samples": 4, "guidance": 4.0}
    assert {k: blob["settings"][k] for k in ("steps", "samples", "guidance")} == vars(translator.sampling)
    expected = translator.translate(encoded, "to-audio", steps=5, samples=4, guidance=4.0, generator=torch.Generator().manual_seed(3))
    np.testing.assert_allclose(blob["embeddings"].numpy(), expected, atol=1e-6)
    assert blob["settings"]["source_space"].startswith("clap:")


def test_bridge_videos_through_a_clip_encoder(world, tmp_path):
    from diffgap_search.encoders import load_encoder
    from diffgap_search.queries import video_queries

    videos = [shared_data("video", name) for name in ("car.mp4", "drum.mp4")]
    clip = world["clip"]
    out = tmp_path / "videos.parquet"
    argv = ["bridge", "--model", world["wide"], "--encoder", f"hf:{clip}", "--out", out, "--device", "cpu"]
    ok(invoke(*argv[:5], "--video", videos[0], "--video", videos[1], *argv[5:]))
    table = __import__("pyarrow.parquet", fromlist=["read_table"]).read_table(out)
    assert table.column("caption").to_pylist() == [str(v) for v in videos]
    queries = video_queries(load_encoder(f"hf:{clip}"), videos)
    expected = Translator.load(world["wide"]).translate(queries.vectors, "to-audio", steps=5, generator=torch.Generator().manual_seed(0))
    got = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_bridge_bad_input_gives_one_error_line_and_exit_2(world, tmp_path):
    model, queries = world["model"], world["queries"]
    wrong_dim = tmp_path / "wrong_dim.parquet"
    write_shard(wrong_dim, np.arange(3), unit_rows(3, WIDE))
    nan = tmp_path / "nan.npy"
    x = unit_rows(3, P)
    x[1, 4] = np.nan
    np.save(nan, x)
    out = tmp_path / "c.npy"
    cases = [
        ("missing file", ["--model", model, "--embeddings", tmp_path / "nope.parquet", "--out", out], ["nope.parquet"]),
        ("wrong dims", ["--model", model, "--embeddings", wrong_dim, "--out", out], [f"dim {WIDE}", f"dim {P}"]),
        ("NaN", ["--model", model, "--embeddings", nan, "--out", out], ["row 1", "NaN"]),
        ("missing model", ["--model", tmp_path / "nowhere", "--embeddings", queries, "--out", out], ["missing"]),
        ("missing video", ["--model", world["wide"], "--encoder", f"hf:{world['clip']}", "--video", tmp_path / "no.mp4", "--out", out], ["no.mp4", "no such file"]),
        ("video into a CLAP encoder", ["--model", model, "--encoder", f"hf:{world['clap']}", "--video", tmp_path / "no.mp4", "--out", out], ["does not embed video"]),
        ("missing texts file", ["--model", model, "--encoder", f"hf:{world['clap']}", "--texts-file", tmp_path / "t.txt", "--out", out], ["t.txt"]),
        ("no input", ["--model", model, "--out", out], ["give one kind of input"]),
        ("two inputs", ["--model", model, "--embeddings", queries, "--text", "a dog", "--out", out], ["--text/--texts-file and --embeddings"]),
        ("text without encoder", ["--model", model, "--text", "a dog", "--out", out], ["--encoder"]),
        ("unknown suffix", ["--model", model, "--embeddings", queries, "--out", tmp_path / "c.txt"], [".npy, .parquet or .pt"]),
        ("suffix against format", ["--model", model, "--embeddings", queries, "--out", out, "--format", "pt"], ["ends in .npy", "--format is pt"]),
        ("text into a wide translator", ["--model", world["wide"], "--encoder", f"hf:{world['clap']}", "--text", "a dog", "--out", out],
         [f"dim {P}", f"dim {WIDE}"]),
    ]
    for name, argv, fragments in cases:
        assert_one_error_line(invoke("bridge", *argv, "--device", "cpu"), *fragments, name=name)
    assert list(tmp_path.glob("c.*")) == [] and not list(tmp_path.glob(".c.*"))  # nothing written, no temporary files


# ---------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipe(world):
    from diffusers import AudioLDMPipeline

    pipe = AudioLDMPipeline.from_pretrained(world["pipeline"], local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    import soundfile

    audio, rate = soundfile.read(path, dtype="float32")
    return audio, rate


def test_prompt_embeddings_are_audioldms_own(pipe):
    """Our encoding of prompts and of the "" null condition equals diffusers' _encode_prompt (the reference)."""
    from diffgap_search.generate import prompt_embeddings

    prompts = ["a dog barks", "rain on a tin roof"]
    reference = pipe._encode_prompt(prompts, torch.device("cpu"), 1, True).detach()  # cat([negative, positive])
    ours = torch.cat([prompt_embeddings(pipe, [""] * 2), prompt_embeddings(pipe, prompts)])
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(ours.norm(dim=-1).numpy(), 1.0, atol=1e-6)


def test_generate_bridged_and_plain_against_diffusers(world, pipe, tmp_path):
    from diffgap_search.generate import prompt_embeddings

    prompts = ["a dog barks", "rain on a tin roof"]
    common = ["--pipeline", world["pipeline"], "--seconds", 0.016, "--steps", 2, "--guidance", 2.5, "--seed", 5, "--device", "cpu"]
    ok(invoke("generate", *prompts, "--model", world["model"], "--out-dir", tmp_path / "bridged", *common, "--bridge-steps", 3))
    ok(invoke("generate", *prompts, "--model", world["model"], "--out-dir", tmp_path / "plain", *common, "--no-bridge"))
    names = ["000-a-dog-barks", "001-rain-on-a-tin-roof"]
    out = {}
    for kind in ("bridged", "plain"):
        assert sorted(p.name for p in (tmp_path / kind).iterdir()) == sorted(n + ext for n in names for ext in (".json", ".wav"))
        waves = []
        for i, name in enumerate(names):
            audio, rate = read_wav(tmp_path / kind / f"{name}.wav")
            assert rate == RATE == pipe.vocoder.config.sampling_rate and audio.shape == (256,)  # 0.016 s at 16 kHz
            side = json.loads((tmp_path / kind / f"{name}.json").read_text())
            assert (side["prompt"], side["seed"], side["bridged"], side["sample_rate"]) == (prompts[i], 5 + i, kind == "bridged", RATE)
            assert (side["steps"], side["guidance"], side["seconds"], side["pipeline"]) == (2, 2.5, 0.016, str(world["pipeline"]))
            # --bridge-steps given, K and w not: the translator's
            assert side["bridge"] == ({"steps": 3, "samples": 4, "guidance": 4.0} if kind == "bridged" else None)
            waves.append(audio)
        out[kind] = np.stack(waves)

    # reference: diffusers called directly; the bridged run with Translator.translate of _encode_prompt's embedding
    generators = lambda: [torch.Generator().manual_seed(5 + i) for i in range(2)]  # noqa: E731
    run = dict(audio_length_in_s=0.016, num_inference_steps=2, guidance_scale=2.5)
    plain = pipe(prompts, generator=generators(), **run).audios
    translator = Translator.load(world["model"])
    text = pipe._encode_prompt(prompts, torch.device("cpu"), 1, False).detach().numpy()
    bridged = np.concatenate([translator.translate(text[i : i + 1], "to-audio", steps=3, samples=4, guidance=4.0,
                                                   generator=torch.Generator().manual_seed(5 + i))
                              for i in range(2)])
    expected = pipe(prompt_embeds=torch.from_numpy(bridged), negative_prompt_embeds=prompt_embeddings(pipe, ["", ""]),
                    generator=generators(), **run).audios
    scale = np.abs(plain).max()
    np.testing.assert_allclose(out["plain"], plain, atol=1e-4 * scale, rtol=0)
    np.testing.assert_allclose(out["bridged"], expected, atol=1e-4 * scale, rtol=0)
    # the bridged condition changes the sound at the same seed
    assert np.abs(out["bridged"] - out["plain"]).max() > 0.02 * scale  # 200x the tolerance of the reference checks above


def test_generate_makes_the_asked_length(world, tmp_path):
    result = ok(invoke("generate", "a hammer hits wood", "--no-bridge", "--pipeline", world["pipeline"], "--out-dir", tmp_path,
                       "--seconds", 0.05, "--steps", 1, "--device", "cpu"))
    audio, rate = read_wav(tmp_path / "000-a-hammer-hits-wood.wav")
    assert rate == RATE and len(audio) == 800  # 0.05 s at 16 kHz (the pipeline rounds up its latents, then cuts)
    assert "0.05 s at 16000 Hz" in result.output


def test_generate_refuses_a_translator_of_another_dim(world, tmp_path):
    result = invoke("generate", "a dog barks", "--model", world["wide"], "--pipeline", world["pipeline"], "--out-dir", tmp_path / "g",
                    "--seconds", 0.016, "--steps", 1, "--device", "cpu")
    assert_one_error_line(result, f"audio space has dim {WIDE}", f"projects to {P}")
    assert not (tmp_path / "g").exists()


def test_generate_without_the_extra_says_how_to_install(world, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "soundfile", None)  # as if soundfile were not installed
    result = invoke("generate", "a dog barks", "--no-bridge", "--pipeline", world["pipeline"], "--out-dir", tmp_path / "g", "--device", "cpu")
    assert_one_error_line(result, 'pip install "diffgap-search[generate]"', "soundfile")


def test_generate_bad_input_gives_one_error_line(world, tmp_path):
    not_audioldm = tmp_path / "other"
    not_audioldm.mkdir()
    (not_audioldm / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    base = ["--out-dir", tmp_path / "g", "--device", "cpu"]
    cases = [
        ("bridge without model", ["a dog", "--pipeline", world["pipeline"], *base], ["--bridge needs --model"]),
        ("missing pipeline folder", ["a dog", "--no-bridge", "--pipeline", tmp_path / "nowhere" / "x", *base], ["cannot load AudioLDM pipeline"]),
        ("folder without index", ["a dog", "--no-bridge", "--pipeline", tmp_path, *base], ["no model_index.json"]),
        ("another pipeline", ["a dog", "--no-bridge", "--pipeline", not_audioldm, *base], ["StableDiffusionPipeline"]),
        ("too short", ["a dog", "--no-bridge", "--pipeline", world["pipeline"], "--seconds", 0.0001, *base], ["at least 0.0005 s"]),
        ("zero seconds", ["a dog", "--no-bridge", "--pipeline", world["pipeline"], "--seconds", 0, *base], ["positive length"]),
        ("empty prompt", [" ", "--no-bridge", "--pipeline", world["pipeline"], *base], ["non-empty prompt"]),
        ("missing model", ["a dog", "--model", tmp_path / "nomodel", "--pipeline", world["pipeline"], *base], ["missing"]),
    ]
    for name, argv, fragments in cases:
        assert_one_error_line(invoke("generate", *argv), *fragments, name=name)
    assert not (tmp_path / "g").exists()
