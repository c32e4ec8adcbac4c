"""Tiny random-weight models built from configs, for offline tests (no model hub here).

The tokenizer is a byte-level BPE trained on the real AudioCaps captions in
../shared/data/manifests, wrapped as RoBERTa's tokenizer, as LAION CLAP's text branch uses.
"""

from __future__ import annotations

import csv
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from conftest import shared_data


def caption_corpus() -> list[str]:
    with open(shared_data("manifests", "audiocaps_test.csv"), newline="") as fh:
        return [row["caption"] for row in csv.DictReader(fh)]


def roberta_tokenizer(folder: Path, vocab_size: int = 400):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(caption_corpus(), vocab_size=vocab_size, min_frequency=2,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(folder))
    # from_pretrained reads vocab.json + merges.txt under transformers 4 and 5 alike (5 ignores the
    # vocab_file/merges_file arguments of the constructor and would leave only the 5 special tokens)
    tokenizer = RobertaTokenizerFast.from_pretrained(str(folder), model_max_length=64)
    assert len(tokenizer) == len(bpe.get_vocab()), (len(tokenizer), len(bpe.get_vocab()))
    return tokenizer


def tiny_hf_clap(folder: Path, seed: int = 0) -> Path:
    """A ClapModel (HTSAT audio branch, RoBERTa text branch) of a few hundred k parameters, saved with its processor."""
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor

    tokenizer = roberta_tokenizer(folder / "tokenizer-src")
    text = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=37, projection_dim=16, max_position_embeddings=80, pad_token_id=tokenizer.pad_token_id)
    audio = dict(depths=[1, 1], num_attention_heads=[2, 2], hidden_size=64, patch_embeds_hidden_size=32,
                 window_size=8, spec_size=256, num_mel_bins=64, enable_fusion=False)
    torch.manual_seed(seed)
    model = ClapModel(ClapConfig(text_config=text, audio_config=audio, projection_dim=16)).eval()
    model.save_pretrained(folder)
    ClapProcessor(feature_extractor=ClapFeatureExtractor(), tokenizer=tokenizer).save_pretrained(folder)
    return folder


LAION_CACHE_REVISION = "0123456789abcdef0123456789abcdef01234567"  # any 40-hex name for the snapshot


@contextmanager
def hf_cache(home: Path):
    """Use `home` as HF_HOME (its hub/ as the cache) in this process, restoring everything after.

    huggingface_hub reads HF_HOME / HF_HUB_CACHE when it is imported (already done in a pytest
    process that used transformers), and reads its module constants at each download call:
    so both the variables and the constants are set.
    """
    from huggingface_hub import constants

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HOME", str(home))
        mp.setenv("HF_HUB_CACHE", str(home / "hub"))
        mp.setattr(constants, "HF_HOME", str(home))
        mp.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
        yield home


def tiny_roberta_cache(home: Path, seed: int = 0) -> Path:
    """A Hugging Face cache (HF_HOME) holding a random 1-layer `roberta-base` and a BPE tokenizer.

    laion_clap builds RobertaModel/RobertaTokenizer.from_pretrained('roberta-base'); its text
    projection takes 768 inputs, so hidden_size stays 768 (1 layer, small FFN); positions
    cover its 77 tokens (+2: RoBERTa's positions start after the padding index). Weights are
    drawn wider than RoBERTa's 0.02 so that different captions get clearly different embeddings.
    """
    from transformers import RobertaConfig, RobertaModel

    snapshot = home / "hub" / "models--roberta-base" / "snapshots" / LAION_CACHE_REVISION
    tokenizer = roberta_tokenizer(home / "tokenizer-src")
    tokenizer.model_max_length = 512
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=768, num_hidden_layers=1, num_attention_heads=12,
                           intermediate_size=64, max_position_embeddings=80, pad_token_id=tokenizer.pad_token_id, initializer_range=0.5,
                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    RobertaModel(config).save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    for name in ("vocab.json", "merges.txt"):  # as in the real repository (transformers 5 saves only tokenizer.json)
        if not (snapshot / name).exists():
            shutil.copy(home / "tokenizer-src" / name, snapshot / name)
    (snapshot.parents[1] / "refs").mkdir(parents=True, exist_ok=True)
    (snapshot.parents[1] / "refs" / "main").write_text(LAION_CACHE_REVISION)
    return home


def tiny_laion_checkpoint(path: Path, home: Path, *, amodel: str = "HTSAT-tiny", fusion: bool = False, seed: int = 0) -> Path:
    """A checkpoint in LAION's own layout from a randomly initialised CLAP (HTSAT audio, RoBERTa text).

    {"state_dict": {"module." + name: tensor, ..., "module.text_branch.embeddings.position_ids": [1, 80]}}
    (DistributedDataParallel's prefix, and the key that newer transformers reject), as the
    official 630k-*.pt files. Built the way CLAP_Module builds its model, with `home` as the cache.
    """
    from diffgap_search.encoders.laion import _clap_module, hub_offline

    with hf_cache(home), hub_offline():
        torch.manual_seed(seed)
        model, _ = _clap_module().create_model(amodel, "roberta", precision="fp32", device="cpu", enable_fusion=fusion,
                                               **({"fusion_type": "aff_2d"} if fusion else {}))
    state = {"module." + k: v for k, v in model.state_dict().items()}
    positions = model.text_branch.config.max_position_embeddings
    state["module.text_branch.embeddings.position_ids"] = torch.arange(positions)[None]
    torch.save({"epoch": 45, "name": "tiny-random", "state_dict": state}, path)
    return path


def tiny_clip(folder: Path, seed: int = 0, *, full_model: bool = False, image_size: int = 32) -> Path:
    """A CLIP vision tower with projection (a few tens of k parameters) and its image processor.

    `full_model` saves a whole CLIPModel (text and vision), the layout of openai/clip-vit-base-patch32."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
                  image_size=image_size, patch_size=8, projection_dim=24)
    torch.manual_seed(seed)
    if full_model:
        text = dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                    max_position_embeddings=16, projection_dim=24, bos_token_id=0, eos_token_id=2, pad_token_id=1)
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)).eval()
    else:
        model = CLIPVisionModelWithProjection(CLIPVisionConfig(**vision)).eval()
    model.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}).save_pretrained(folder)
    return folder


def tiny_audioldm(folder: Path, seed: int = 0, *, projection_dim: int = 16) -> Path:
    """A random AudioLDMPipeline (a few hundred k parameters) saved with save_pretrained, as diffusers' own
    tests/pipelines/audioldm/test_audioldm.py builds one (narrower), with the caption-trained tokenizer.

    The UNet takes the CLAP projection (`projection_dim`) as its class embedding; the vocoder turns 8 mel
    bins into 16 kHz audio, 4 samples a frame, so 0.016 s is 64 frames = 256 samples."""
    from diffusers import AudioLDMPipeline, AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import ClapTextConfig, ClapTextModelWithProjection, SpeechT5HifiGan, SpeechT5HifiGanConfig

    tokenizer = roberta_tokenizer(folder / "tokenizer-src")
    tokenizer.model_max_length = 32
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=(8, 16), attention_head_dim=2, class_embed_type="simple_projection",
        projection_class_embeddings_input_dim=projection_dim, class_embeddings_concat=True)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False)
    vae = AutoencoderKL(block_out_channels=[8, 16], norm_num_groups=8, in_channels=1, out_channels=1, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)
    text_encoder = ClapTextModelWithProjection(ClapTextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=24, num_attention_heads=2, num_hidden_layers=1,
        projection_dim=projection_dim, max_position_embeddings=40, layer_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(
        model_in_dim=8, sampling_rate=16000, upsample_initial_channel=8, upsample_rates=[2, 2], upsample_kernel_sizes=[4, 4],
        resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]], normalize_before=False))
    with torch.no_grad():  # drawn 5x wider than the default init, so that the condition clearly moves the output
        unet.class_embedding.weight.mul_(5)
    pipe = AudioLDMPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler, vocoder=vocoder)
    pipe.save_pretrained(folder)
    return folder
