"""The Encoder protocol, `require` and the registry of encoder specs (no model is loaded)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import diffgap_search.encoders as encoders
from diffgap_search.encoders import ENCODERS, MODALITIES, Encoder, load_encoder, register, require
from diffgap_search.encoders.hf_clap import HFClapEncoder
from diffgap_search.encoders.hf_clip import HFClipVideoEncoder
from diffgap_search.encoders.laion import LaionClapEncoder
from diffgap_search.errors import DiffgapError
from diffgap_search.ingest import embed_media
from diffgap_search.storage import write_shard


class FakeTextEncoder:
    """A text-only encoder: hashes words into 4 dimensions."""

    modalities = frozenset({"text"})
    precomputed = False

    def __init__(self, name: str, options):
        self.space, self.dim, self.options = f"fake:{name}", 4, options

    def encode_text(self, texts: list[str]) -> np.ndarray:
        x = np.array([[len(t), t.count(" "), 1.0, 0.0] for t in texts], np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_fake(name, options) -> FakeTextEncoder:  # the factory registered as "test_encoders:make_fake"
    return FakeTextEncoder(name, options)


@pytest.mark.parametrize("cls", [HFClapEncoder, LaionClapEncoder, HFClipVideoEncoder])
def test_every_model_encoder_has_the_method_of_each_modality_it_declares(cls):
    assert cls.modalities and cls.modalities <= set(MODALITIES) and cls.precomputed is False
    for m in MODALITIES:
        assert callable(getattr(cls, f"encode_{m}", None)) == (m in cls.modalities), (cls.__name__, m)


def test_require_names_the_space_what_it_embeds_and_the_fix():
    enc = FakeTextEncoder("words", None)
    assert isinstance(enc, Encoder)
    require(enc, "text")  # embeds text: no error
    with pytest.raises(DiffgapError) as err:
        require(enc, "audio")
    assert str(err.value) == ("encoder 'fake:words' does not embed audio; it embeds text: use a CLAP encoder "
                              "(hf:laion/clap-htsat-unfused, or laion-clap:HTSAT-tiny with --checkpoint)")
    with pytest.raises(DiffgapError) as err:
        require(enc, "video", "use --video-encoder hf:openai/clip-vit-base-patch32")
    assert str(err.value) == ("encoder 'fake:words' does not embed video; it embeds text: "
                              "use --video-encoder hf:openai/clip-vit-base-patch32")
    with pytest.raises(TypeError, match="not an Encoder"):
        require(object(), "text")


def test_precomputed_features_embed_their_own_modality(tmp_path):
    x = np.eye(3, dtype=np.float32)
    write_shard(tmp_path / "feats.parquet", np.arange(3), x, pa.table({"key": ["a", "b", "c"]}), space="cavp",
                modality="video")
    write_shard(tmp_path / "sounds.parquet", np.arange(3), x, pa.table({"key": ["a", "b", "c"]}), space="beats",
                modality="audio")
    video = load_encoder(f"precomputed:{tmp_path / 'feats.parquet'}")
    audio = load_encoder(f"precomputed:{tmp_path / 'sounds.parquet'}")
    assert (video.modalities, audio.modalities) == ({"video"}, {"audio"}) and video.precomputed
    np.save(tmp_path / "any.npy", x)
    (tmp_path / "any.csv").write_text("key\na\nb\nc\n")
    assert load_encoder(f"precomputed:{tmp_path / 'any.npy'}").modalities == {"audio", "video"}  # a .npy does not say
    require(audio, "audio")
    with pytest.raises(DiffgapError, match=r"'cavp' does not embed audio; it embeds video \(precomputed, by file name\): "
                                           r"use --modality video or another --encoder"):
        embed_media(video, [tmp_path], tmp_path / "out.parquet", progress=False)
    assert not (tmp_path / "out.parquet").exists()


def test_an_unknown_spec_lists_every_registered_prefix():
    for spec in ("nope:thing", "hf:", "laion/clap-htsat-unfused"):
        with pytest.raises(DiffgapError) as err:
            load_encoder(spec)
        message = str(err.value)
        assert message.startswith(f"encoder {spec!r} is unknown; use one of: ") and "\n" not in message
        assert all(f"{prefix}: " in message for prefix in ("hf", "laion-clap", "precomputed"))


def test_a_registered_encoder_loads_from_its_spec_with_the_options(monkeypatch):
    monkeypatch.setattr(encoders, "ENCODERS", dict(ENCODERS))
    register("fake", "test_encoders:make_fake", "word-count text encoder: fake:NAME")
    enc = load_encoder("fake:words", batch_size=3, num_frames=5)
    assert isinstance(enc, FakeTextEncoder) and enc.space == "fake:words"
    assert (enc.options.batch_size, enc.options.num_frames, enc.options.checkpoint) == (3, 5, None)
    with pytest.raises(DiffgapError, match=r"unknown; use one of: .*fake: word-count"):
        load_encoder("other:x")
    with pytest.raises(DiffgapError, match="--checkpoint is for laion-clap: encoders; fake:words takes no weights file"):
        load_encoder("fake:words", checkpoint="w.pt")
    with pytest.raises(ValueError, match="registered already"):
        register("fake", "test_encoders:make_fake", "again")
    monkeypatch.undo()
    assert "fake" not in encoders.ENCODERS
