"""The reference LAION-CLAP encoder: the `laion_clap` package (1.1.7) with an official
checkpoint file, e.g. 630k-audioset-best.pt (HTSAT-tiny) or 630k-audioset-fusion-best.pt
(HTSAT-tiny+fusion).

What differs from calling `laion_clap.CLAP_Module` directly, and why:

- Import. `import laion_clap` loads the bert-base-uncased, roberta-base and
  facebook/bart-base tokenizers from the hub at import time (laion_clap/training/data.py).
  We import only its model package (`clap_module`, which laion_clap itself puts on
  sys.path) and build the model the way `CLAP_Module.__init__` does
  (`create_model(amodel, "roberta", precision="fp32", enable_fusion=..., fusion_type="aff_2d")`),
  so roberta-base is the only model that must be in the Hugging Face cache.
- Checkpoints are read with `torch.load(weights_only=True)`: a file that needs anything but
  tensors and plain containers is refused, so loading never runs code from the file.
  As in laion_clap's own loader, the `module.` prefix is stripped and
  `text_branch.embeddings.position_ids` is dropped (transformers >= 4.31 keeps it as a
  non-persistent buffer and would reject the key).
- No randomness. laion_clap's `get_audio_features` crops clips longer than 10 s at random
  (and, for fusion models, picks random chunks). Our windows are exactly 480,000 samples,
  for which that function takes its deterministic branch: no padding, `longer = False`,
  and for fusion models `mel_fusion` = the window's log-mel repeated 4 times. We build
  exactly that input (the same int16 round trip of the samples as laion_clap's
  `get_audio_embedding_from_data` / `_from_filelist`, and the same torchaudio log-mel) and
  call the model's `get_audio_embedding`. The model runs in eval mode, where HTSAT neither
  augments nor flags a random window as "longer".
- Offline. roberta-base is looked up in the local Hugging Face cache only (HF_HUB_OFFLINE=1
  while the model is built, unless the user set HF_HUB_OFFLINE=0): a missing one fails at
  once with what to place where, instead of retrying the network for minutes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from diffgap_search.encoders.common import check_texts, unit
from diffgap_search.errors import DiffgapError

TEXT_MODEL = "roberta-base"  # laion_clap's tmodel 'roberta' (the official checkpoints use it)
POSITION_IDS = "text_branch.embeddings.position_ids"
MAX_TEXT_TOKENS = 77  # CLAP_Module.tokenizer
CHECKPOINT_HELP = ("download an official LAION-CLAP checkpoint once where there is network "
                   "(e.g. 630k-audioset-best.pt from huggingface.co/lukewys/laion_clap) and pass its path with --checkpoint")


def parse_spec(name: str) -> tuple[str, bool]:
    """'HTSAT-tiny' -> ('HTSAT-tiny', False); 'HTSAT-tiny+fusion' -> ('HTSAT-tiny', True)."""
    amodel, plus, suffix = name.partition("+")
    if plus and suffix != "fusion":
        raise DiffgapError(f"laion-clap:{name}: the only option after '+' is 'fusion' (laion-clap:HTSAT-tiny+fusion)")
    return amodel, bool(plus)


def _laion_dir() -> Path:
    spec = importlib.util.find_spec("laion_clap")  # locates the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise DiffgapError("laion-clap encoders need the laion_clap package: pip install 'diffgap-search[laion]' "
                           "(laion-clap==1.1.7)")
    return Path(list(spec.submodule_search_locations)[0])


def audio_models() -> list[str]:
    """Audio branches laion_clap has configs for (HTSAT-tiny, HTSAT-base, ..., PANN-14, ...)."""
    configs = _laion_dir() / "clap_module" / "model_configs"
    return sorted(p.stem for p in configs.glob("*.json") if "audio_cfg" in json.loads(p.read_text()))


def _clap_module():
    folder = str(_laion_dir())
    if folder not in sys.path:
        sys.path.append(folder)  # what laion_clap/__init__.py does; its code imports `clap_module` top-level
    import clap_module

    return clap_module


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A LAION-CLAP checkpoint's state dict, `module.` stripped; never unpickles code."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DiffgapError(f"checkpoint {path}: no such file; {CHECKPOINT_HELP}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read is the file's, reported as such
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
        found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\. Please|\n|$)", text)
        if found and found.group(1).startswith("Unsupported global"):  # a pickled object: class, function, ...
            reason = found.group(1).strip()
            raise DiffgapError(
                f"checkpoint {path}: refused: it holds more than tensors ({reason[:160]}), and it is never unpickled "
                "since that could run code from the file; if you trust it, keep only its weights: "
                "torch.save({'state_dict': torch.load(OLD, weights_only=False)['state_dict']}, NEW) and pass NEW"
            ) from None
        reason = (f"unreadable as tensors: {found.group(1).strip()}" if found
                  else f"{type(exc).__name__}: {(text.strip().splitlines() or [''])[0][:160]}")
        raise DiffgapError(f"checkpoint {path}: not a PyTorch checkpoint ({reason}); {CHECKPOINT_HELP}") from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not state or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise DiffgapError(f"checkpoint {path}: not a LAION-CLAP checkpoint (expected a dict with a 'state_dict' of "
                           f"named tensors, found {type(obj).__name__}); {CHECKPOINT_HELP}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _false(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("0", "false", "no", "off")


@contextmanager
def hub_offline():
    """HF_HUB_OFFLINE=1 for the duration (unless the user set it to 0), restored afterwards.

    huggingface_hub reads the variable when it is imported, so its module constant is set
    too when it has been imported already (as it is in a process that used transformers).
    """
    if _false(os.environ.get("HF_HUB_OFFLINE")):
        yield False
        return
    from huggingface_hub import constants

    saved_env, saved_const = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    try:
        yield True
    finally:
        constants.HF_HUB_OFFLINE = saved_const
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env


def _missing_text_model(exc: Exception | None = None) -> DiffgapError:
    from huggingface_hub import constants

    why = f" ({str(exc).strip().splitlines()[0][:160]})" if exc is not None and str(exc).strip() else ""
    return DiffgapError(
        f"laion-clap needs the {TEXT_MODEL} model and tokenizer in the Hugging Face cache (HF_HOME, now "
        f"{constants.HF_HUB_CACHE}/models--{TEXT_MODEL}){why}; download it once where there is network "
        f"(hf download {TEXT_MODEL}) and point HF_HOME at that cache, or set HF_HUB_OFFLINE=0 to let it download"
    )


def from_spec(name: str, options) -> LaionClapEncoder:
    """The encoder of laion-clap:`name` (`options`: an encoders.EncoderOptions)."""
    amodel, fusion = parse_spec(name)
    return LaionClapEncoder(amodel, fusion=fusion, checkpoint=options.checkpoint, device=options.device,
                            batch_size=options.batch_size)


class LaionClapEncoder:
    modalities = frozenset({"audio", "text"})
    precomputed = False

    def __init__(self, amodel: str = "HTSAT-tiny", *, fusion: bool = False, checkpoint: str | Path | None = None,
                 device: str = "cpu", batch_size: int = 16):
        models = audio_models()
        if amodel not in models:
            raise DiffgapError(f"laion-clap:{amodel}: unknown audio model; use one of {', '.join(models)} "
                               "(the official checkpoints are HTSAT-tiny, HTSAT-tiny+fusion and HTSAT-base)")
        if checkpoint is None:
            raise DiffgapError(f"laion-clap:{amodel} needs --checkpoint PATH; {CHECKPOINT_HELP}")
        self.amodel, self.fusion = amodel, bool(fusion)
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.checkpoint = Path(checkpoint).expanduser()
        state = load_checkpoint(self.checkpoint)  # before the model: a bad file fails in a second
        tag = f"{amodel}{'+fusion' if fusion else ''}"
        self.space = f"laion-clap:{tag}@{file_sha256(self.checkpoint)[:12]}"

        clap_module = _clap_module()
        with hub_offline() as offline:
            if offline:
                from huggingface_hub import try_to_load_from_cache

                if not isinstance(try_to_load_from_cache(TEXT_MODEL, "config.json"), str):
                    raise _missing_text_model()
            try:
                from transformers import RobertaTokenizer

                # as CLAP_Module.__init__ builds it (precision fp32; fusion_type aff_2d for fusion models)
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="torch.meshgrid")  # HTSAT's, harmless
                    model, self.model_cfg = clap_module.create_model(
                        amodel, "roberta", precision="fp32", device=self.device, enable_fusion=self.fusion,
                        **({"fusion_type": "aff_2d"} if self.fusion else {}),
                    )
                self.tokenizer = RobertaTokenizer.from_pretrained(TEXT_MODEL)
            except (OSError, ValueError) as exc:
                raise _missing_text_model(exc) from None
        if POSITION_IDS not in model.state_dict():
            state.pop(POSITION_IDS, None)
        self._load(model, state, tag)
        self.model = model.eval()
        audio_cfg = self.model_cfg["audio_cfg"]
        self.sample_rate = int(audio_cfg["sample_rate"])  # 48000
        self.window_samples = 480_000  # laion_clap's max_len for every model (get_audio_embedding_from_data)
        self.dim = int(model.joint_embed_shape)  # 512
        self._mel = _log_mel(audio_cfg) if self.fusion else None

    def _load(self, model, state: dict, tag: str) -> None:
        expected = model.state_dict()
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        reshaped = [k for k in state if k in expected and state[k].shape != expected[k].shape]
        if missing or unexpected or reshaped:
            hint = ""
            if any("fusion" in k for k in unexpected) and not self.fusion:
                hint = f"; it is a fusion checkpoint: use laion-clap:{self.amodel}+fusion"
            elif any("fusion" in k for k in missing) and self.fusion:
                hint = f"; it is not a fusion checkpoint: use laion-clap:{self.amodel}"
            elif reshaped:
                hint = "; it is of another audio model (the music/speech checkpoints are laion-clap:HTSAT-base)"
            parts = [f"{len(v)} {what} (e.g. {v[0]})" for v, what in
                     ((missing, "missing keys"), (unexpected, "unexpected keys"), (reshaped, "tensors of another shape")) if v]
            raise DiffgapError(f"checkpoint {self.checkpoint} does not fit laion-clap:{tag}: {', '.join(parts)}{hint}")
        model.load_state_dict(state, strict=True)

    def _audio_inputs(self, windows: np.ndarray) -> list[dict]:
        """laion_clap's get_audio_features for inputs of exactly max_len (its deterministic branch)."""
        # the int16 round trip of get_audio_embedding_from_data(use_tensor=False) / _from_filelist
        quantized = (np.clip(windows, a_min=-1.0, a_max=1.0) * 32767.0).astype(np.int16)
        quantized = (quantized / 32767.0).astype(np.float32)
        out = []
        for w in quantized:
            sample = {}
            waveform = torch.from_numpy(w)
            if self.fusion:
                mel = self._mel(waveform)
                sample["mel_fusion"] = torch.stack([mel, mel, mel, mel], dim=0)
            sample["longer"] = torch.tensor([False])
            sample["waveform"] = waveform
            out.append(sample)
        return out

    @torch.no_grad()
    def encode_audio(self, windows: np.ndarray) -> np.ndarray:
        """windows float32 [n, 480000] at 48 kHz -> unit [n, dim]."""
        windows = np.asarray(windows, dtype=np.float32)
        if windows.ndim != 2 or windows.shape[1] != self.window_samples:
            raise DiffgapError(f"audio windows must be [n, {self.window_samples}] samples, got {windows.shape}")
        out = [self.model.get_audio_embedding(self._audio_inputs(windows[lo: lo + self.batch_size])).float()
               for lo in range(0, len(windows), self.batch_size)]
        return unit(torch.cat(out))

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> np.ndarray:
        check_texts(texts)
        out = []
        for lo in range(0, len(texts), self.batch_size):
            tok = self.tokenizer(texts[lo: lo + self.batch_size], padding="max_length", truncation=True,
                                 max_length=MAX_TEXT_TOKENS, return_tensors="pt")
            out.append(self.model.get_text_embedding({"input_ids": tok["input_ids"],
                                                      "attention_mask": tok["attention_mask"]}).float())
        return unit(torch.cat(out))


def _log_mel(audio_cfg: dict):
    """laion_clap's training.data.get_mel (torchaudio), for the fusion models' 'mel_fusion' input."""
    try:
        import torchaudio
    except ImportError:
        raise DiffgapError("laion-clap fusion models need torchaudio for their log-mel input: "
                           "pip install 'diffgap-search[laion]' (or pip install torchaudio)") from None
    mel_tf = torchaudio.transforms.MelSpectrogram(
        sample_rate=audio_cfg["sample_rate"], n_fft=audio_cfg["window_size"], win_length=audio_cfg["window_size"],
        hop_length=audio_cfg["hop_size"], center=True, pad_mode="reflect", power=2.0, norm=None,
        n_mels=audio_cfg["mel_bins"], f_min=audio_cfg["fmin"], f_max=audio_cfg["fmax"],
    )
    to_db = torchaudio.transforms.AmplitudeToDB(top_db=None)

    def mel(waveform: torch.Tensor) -> torch.Tensor:
        return to_db(mel_tf(waveform)).T  # (T, n_mels)

    return mel

