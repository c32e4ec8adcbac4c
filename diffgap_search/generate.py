"""Text-to-audio with diffusers' AudioLDMPipeline, conditioned through the generation bridge.

    pipe = load_pipeline("cvssp/audioldm-s-full-v2")
    files = generate(pipe, ["a dog barks"], "out/", translator, seconds=5.12, steps=10, guidance=2.5, seed=0)

AudioLDM was trained on CLAP *audio* embeddings and is driven by CLAP *text*
embeddings at inference (the modality gap). With a translator, each prompt is
1. encoded by the pipeline's own CLAP text encoder exactly as its `_encode_prompt`
   does: tokens padded to `model_max_length`, `text_embeds`, L2-normalized  # [n, P]
2. translated "to-audio" by DiffGAP (S steps, K samples, its own guidance)     # [n, P] unit
3. passed as `prompt_embeds`. The `negative_prompt_embeds` are the pipeline's
   encoding of "" (what AudioLDM does without a negative prompt): AudioLDM learned
   its null condition from that *text* embedding (training drops a condition by
   replacing it with the CLAP text embedding of ""), so it is not translated.
Without a translator, step 2 is skipped: plain AudioLDM.

Each prompt i gets the seed `seed + i` for both the translation noise and the
latents, so one prompt re-run alone with that seed gives the same file.
Needs the `generate` extra (soundfile): pip install "diffgap-search[generate]".
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffgap_search.errors import DiffgapError

INSTALL_HINT = 'pip install "diffgap-search[generate]"'


def _require():
    """(AudioLDMPipeline, soundfile), or one line saying how to install them."""
    try:
        import soundfile
        from diffusers import AudioLDMPipeline
    except ImportError as exc:
        missing = getattr(exc, "name", None) or str(exc)
        raise DiffgapError(f"generate needs the optional packages of the generate extra ({missing} is missing): {INSTALL_HINT}") from None
    return AudioLDMPipeline, soundfile


@contextmanager
def quiet_loading():
    """diffusers' and transformers' load-time notices (deprecation, accelerate, progress bars) at error level only."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    before = dlog.get_verbosity(), tlog.get_verbosity()
    bars = dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        dlog.set_verbosity(before[0])
        tlog.set_verbosity(before[1])
        if bars[0]:
            dlog.enable_progress_bar()
        if bars[1]:
            tlog.enable_progress_bar()


def load_pipeline(spec: str, device: str = "cpu"):
    """An AudioLDMPipeline from a local folder or the local Hugging Face cache (no network, as the encoders)."""
    from diffgap_search.encoders.common import local_or_hub

    AudioLDMPipeline, _ = _require()
    source, folder = local_or_hub(spec)
    if folder is not None:
        index = folder / "model_index.json"
        if not index.is_file():
            raise DiffgapError(f"--pipeline {spec}: no model_index.json in that folder; give a diffusers AudioLDM folder "
                               "(pipe.save_pretrained) or a model id such as cvssp/audioldm-s-full-v2")
        try:
            kind = json.loads(index.read_text()).get("_class_name")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
            raise DiffgapError(f"{index}: not a valid model index ({exc})") from None
        if kind != "AudioLDMPipeline":
            raise DiffgapError(f"--pipeline {spec} holds a {kind!r}; generate runs AudioLDMPipeline models (e.g. cvssp/audioldm-s-full-v2)")
    try:
        with quiet_loading():
            pipe = AudioLDMPipeline.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as exc:
        where = f"folder {folder}" if folder is not None else f"the Hugging Face cache (HF_HOME) under models--{spec.replace('/', '--')}"
        raise DiffgapError(f"cannot load AudioLDM pipeline {spec!r} from {where} ({str(exc).splitlines()[0][:160]}); "
                           f"download it once where there is network (hf download {spec}) or pass a local folder") from None
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def prompt_embeddings(pipe, texts: list[str]) -> torch.Tensor:
    """Unit CLAP text embeddings [n, P], as AudioLDMPipeline._encode_prompt computes them."""
    tokens = pipe.tokenizer(texts, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
                            return_tensors="pt")
    device = pipe.text_encoder.device
    output = pipe.text_encoder(tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device))
    return torch.nn.functional.normalize(output.text_embeds, dim=-1)  # [n, P]


def condition_dim(pipe) -> int:
    """P: the CLAP projection dim of the pipeline's text encoder, which its UNet takes as class embedding."""
    return int(pipe.text_encoder.config.projection_dim)


def check_translator(pipe, translator) -> None:
    """The translator must map the pipeline's text space (dim P) into an audio space of dim P."""
    p = condition_dim(pipe)
    a, b = translator.config.space_a, translator.config.space_b
    if a.dim != p:
        raise DiffgapError(f"the translator's audio space has dim {a.dim}, the pipeline's CLAP text encoder projects to {p} "
                           "(the dim of the generator's conditions); use a translator trained on that CLAP model's "
                           "embeddings (512 for cvssp/audioldm-*)")
    if b.dim != p:
        raise DiffgapError(f"the translator's query side has dim {b.dim}, the pipeline's CLAP text encoder projects to {p}; "
                           "use a translator trained on that CLAP model's text embeddings")
    if b.modality not in (None, "text"):
        raise DiffgapError(f"the translator's query side is {b.modality} ({b.name}); generate bridges text prompts, "
                           "use a translator trained on CLAP text-audio pairs")


@dataclass
class GeneratedFile:
    wav: Path
    sidecar: Path
    prompt: str
    seed: int
    samples: int  # waveform length at `sample_rate`
    sample_rate: int


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe short form of a prompt: 'A dog barks!' -> 'a-dog-barks'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].rstrip("-") or "prompt"


def check_seconds(pipe, seconds: float | None) -> None:
    """The shortest length the pipeline can make: one latent frame of mel frames."""
    if seconds is None:
        return
    vocoder = pipe.vocoder.config
    shortest = float(np.prod(vocoder.upsample_rates)) / vocoder.sampling_rate * pipe.vae_scale_factor
    if not seconds >= shortest:
        raise DiffgapError(f"--seconds {seconds}: this pipeline makes at least {shortest:g} s of audio; ask for more")


def generate(pipe, prompts: list[str], out_dir: str | Path, translator=None, *, seconds: float | None = None,
             steps: int = 10, guidance: float = 2.5, seed: int = 0, bridge_steps: int | None = None,
             bridge_samples: int | None = None, bridge_guidance: float | None = None,
             settings: dict | None = None) -> list[GeneratedFile]:
    """One WAV (float32, the pipeline's sample rate) and one JSON sidecar per prompt in `out_dir`.

    The bridge's S, K, w not given are the translator's (`Translator.sampling`); the sidecar records the ones used.
    """
    _, soundfile = _require()
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise DiffgapError("give at least one non-empty prompt, e.g. \"a dog barks\"")
    if steps < 1:
        raise DiffgapError(f"--steps {steps}: the generator needs at least 1 step")
    check_seconds(pipe, seconds)
    if translator is not None:
        check_translator(pipe, translator)
        sampling = translator.sampling.fill(bridge_steps, bridge_samples, bridge_guidance)
        bridge_steps, bridge_samples, bridge_guidance = sampling.steps, sampling.samples, sampling.guidance
    seeds = [seed + i for i in range(len(prompts))]
    text = prompt_embeddings(pipe, prompts)  # [n, P]
    negative = prompt_embeddings(pipe, [""] * len(prompts))  # [n, P]: AudioLDM's null condition
    if translator is not None:
        rows = [translator.translate(text[i : i + 1].float().cpu().numpy(), "to-audio", steps=bridge_steps, samples=bridge_samples,
                                     guidance=bridge_guidance, generator=torch.Generator().manual_seed(s))
                for i, s in enumerate(seeds)]  # one generator per prompt: a prompt's condition does not depend on its batch
        conditions = torch.from_numpy(np.concatenate(rows)).to(text.device, text.dtype)  # [n, P] audio space, unit
    else:
        conditions = text
    audios = pipe(prompt_embeds=conditions, negative_prompt_embeds=negative, audio_length_in_s=seconds,
                  num_inference_steps=steps, guidance_scale=guidance, output_type="np",
                  generator=[torch.Generator().manual_seed(s) for s in seeds]).audios  # [n, samples]
    rate = int(pipe.vocoder.config.sampling_rate)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {
        **(settings or {}),
        "seconds": None if seconds is None else float(seconds),
        "steps": steps,
        "guidance": guidance,
        "bridged": translator is not None,
        "bridge": {"steps": bridge_steps, "samples": bridge_samples, "guidance": bridge_guidance} if translator is not None else None,
        "negative_prompt": "",
    }
    files = []
    for i, (prompt, audio, s) in enumerate(zip(prompts, audios, seeds)):
        files.append(_write_outputs(soundfile, out_dir / f"{i:03d}-{slug(prompt)}", prompt, s, np.asarray(audio, np.float32), rate, record))
    return files


def _write_outputs(soundfile, stem: Path, prompt: str, seed: int, audio: np.ndarray, rate: int, record: dict) -> GeneratedFile:
    from diffgap_search.storage import write_file_atomic
    from diffgap_search.storage import write_json_atomic

    wav, sidecar = stem.with_suffix(".wav"), stem.with_suffix(".json")
    write_file_atomic(wav, lambda fh: soundfile.write(fh, audio, rate, format="WAV", subtype="FLOAT"))
    write_json_atomic({"prompt": prompt, "seed": seed, "wav": wav.name, "sample_rate": rate, "samples": int(len(audio)),
                       "duration_s": len(audio) / rate, **record}, sidecar)
    return GeneratedFile(wav, sidecar, prompt, seed, int(len(audio)), rate)
