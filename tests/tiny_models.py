"""Tiny random-weight models built from configs, for offline tests (no model hub here).

The tokenizer is a byte-level BPE trained on the real AudioCaps captions in
../shared/data/manifests, wrapped as RoBERTa's tokenizer, as LAION CLAP's text branch uses.
"""

from __future__ import annotations

import csv
from pathlib import Path

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
    return RobertaTokenizerFast(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"),
                                model_max_length=64)


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
