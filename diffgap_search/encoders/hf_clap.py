"""CLAP through transformers (ClapModel + ClapProcessor), e.g. the converted LAION
checkpoints laion/clap-htsat-unfused and laion/larger_clap_general.

Audio arrives as deterministic 10 s windows at 48 kHz (`audio_io.clip_windows`), so
the feature extractor never crops at random: every window is exactly its
`max_length_s`, and embeddings are identical from run to run and batch to batch.
Loading is offline-first: a hub id is looked up only in the local Hugging Face cache
(no network, no retries); a missing model fails at once with what to place where.
"""

from __future__ import annotations

import numpy as np
import torch

from diffgap_search.encoders.common import check_texts, features, load_failure, local_or_hub, model_identity, unit
from diffgap_search.errors import DiffgapError


class HFClapEncoder:
    modalities = frozenset({"audio", "text"})
    precomputed = False

    def __init__(self, name: str, *, device: str = "cpu", batch_size: int = 16):
        from transformers import ClapModel, ClapProcessor

        self.name = name
        self.device = torch.device(device)
        self.batch_size = batch_size
        source, local = local_or_hub(name)
        try:
            self.processor = ClapProcessor.from_pretrained(source, local_files_only=True)
            self.model = ClapModel.from_pretrained(source, local_files_only=True).eval().to(self.device)
        except (OSError, ValueError) as exc:
            raise load_failure(name, local, exc, "CLAP model") from None
        extractor = self.processor.feature_extractor
        self.sample_rate = int(extractor.sampling_rate)
        self.window_samples = int(round(extractor.max_length_s * self.sample_rate)) if hasattr(extractor, "max_length_s") else int(extractor.nb_max_samples)
        self.dim = int(self.model.config.projection_dim)
        # fused models take 4-channel "fusion" mels; unfused ones one channel. Our windows are
        # exactly max_length, so "rand_trunc" never crops (no randomness either way).
        self.truncation = "fusion" if self.model.config.audio_config.enable_fusion else "rand_trunc"
        self.space = f"clap:{model_identity(name, local)}"

    @torch.no_grad()
    def encode_audio(self, windows: np.ndarray) -> np.ndarray:
        """windows float32 [n, window_samples] at the model's rate -> unit [n, dim]."""
        windows = np.asarray(windows, dtype=np.float32)
        if windows.ndim != 2 or windows.shape[1] != self.window_samples:
            raise DiffgapError(f"audio windows must be [n, {self.window_samples}] samples, got {windows.shape}")
        out = []
        for lo in range(0, len(windows), self.batch_size):
            batch = list(windows[lo : lo + self.batch_size])
            inputs = self.processor.feature_extractor(batch, sampling_rate=self.sample_rate, truncation=self.truncation,
                                                      padding="repeatpad", return_tensors="pt")
            inputs = {k: v.to(self.device) for k, v in inputs.items() if k in ("input_features", "is_longer")}
            out.append(features(self.model.get_audio_features(**inputs)).float())
        return unit(torch.cat(out))

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> np.ndarray:
        check_texts(texts)
        out = []
        for lo in range(0, len(texts), self.batch_size):
            tok = self.processor.tokenizer(texts[lo : lo + self.batch_size], padding=True, truncation=True, return_tensors="pt")
            tok = {k: v.to(self.device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}
            out.append(features(self.model.get_text_features(**tok)).float())
        return unit(torch.cat(out))

