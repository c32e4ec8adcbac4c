"""bridge, generate: audio-space conditions for AudioLDM-style generators."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from diffgap_search.cli.common import Device, load_query_encoder, load_translator, user_errors
from diffgap_search.errors import DiffgapError


class ConditionFormat(str, Enum):
    npy = "npy"
    parquet = "parquet"
    pt = "pt"


@user_errors
def bridge_command(
    model: Path = typer.Option(..., "--model", "-m", help="Translator folder (from `train`) whose to-audio direction makes the conditions."),
    text: Optional[List[str]] = typer.Option(None, "--text", help="A text to bridge, e.g. \"a dog barks\" (repeat for several; needs --encoder)."),
    texts_file: Optional[Path] = typer.Option(None, "--texts-file", help="Texts, one per line (or a CSV with a caption column)."),
    video: Optional[List[Path]] = typer.Option(None, "--video", help="A video file to bridge (repeat for several; needs a video --encoder)."),
    embeddings: Optional[Path] = typer.Option(None, "--embeddings", help="Query-side embeddings already made: a parquet shard (id, embedding, caption) or a .npy."),
    out: Path = typer.Option(..., "--out", "-o", help="Conditions file: .npy (+ a .json sidecar), .parquet or .pt; replaced atomically."),
    fmt: Optional[ConditionFormat] = typer.Option(None, "--format", help="npy, parquet or pt [from the --out suffix]."),
    encoder: Optional[str] = typer.Option(None, "--encoder", "-E", help="Encoder of texts and videos, e.g. hf:laion/clap-htsat-unfused (the translator's query side)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Weights file of a laion-clap encoder."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="S: DDIM steps of the translation [the translator's, else 5]."),
    samples: Optional[int] = typer.Option(None, "--samples", min=1, help="K: translations averaged per input [the translator's, else 4]."),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="Classifier-free guidance scale w of the translation, 1 = conditional only [the translator's, else 4]."),
    seed: int = typer.Option(0, "--seed", help="Seed of the translation noise (torch.Generator().manual_seed)."),
    device: Device = typer.Option(Device.auto, "--device"),
) -> None:
    """Turn texts, videos or embeddings into audio-space conditions for an AudioLDM-style generator.

    The file keeps each condition's id and caption and loads without diffgap-search (numpy + json,
    pyarrow, or torch.load(weights_only=True)); the README's "Generation bridge" section gives the layouts.

    Example: diffgap-search bridge --model models/audiocaps --encoder hf:laion/clap-htsat-unfused --text "a dog barks" --out conditions.npy

    Example: diffgap-search bridge --model models/audiocaps --embeddings captions.parquet --out conditions.parquet
    """
    from diffgap_search.bridge import bridge, output_format, write_conditions
    from diffgap_search.ingest import read_captions
    from diffgap_search.queries import embedding_queries, text_queries, video_queries

    texts = list(text or []) + (read_captions([texts_file]) if texts_file else [])
    given = [name for name, value in (("--text/--texts-file", texts), ("--video", video), ("--embeddings", embeddings)) if value]
    if len(given) != 1:
        raise DiffgapError("give one kind of input: --text/--texts-file, --video files or --embeddings"
                           + (f" (got {' and '.join(given)})" if given else ""))
    if embeddings and (encoder or checkpoint):
        raise DiffgapError("--embeddings are already encoded; --encoder/--checkpoint go with --text or --video")
    if not embeddings and not encoder:
        raise DiffgapError("texts and videos need --encoder (the translator's query-side encoder, e.g. hf:laion/clap-htsat-unfused)")
    if checkpoint and not encoder:
        raise DiffgapError("--checkpoint goes with --encoder laion-clap:...")
    fmt_name = output_format(out, fmt.value if fmt else None)
    translator = load_translator(model, device)
    if embeddings:
        queries = embedding_queries(embeddings)
    else:
        from diffgap_search.generate import quiet_loading

        with quiet_loading():  # no load-time progress bars: stderr keeps to one line per error
            enc = load_query_encoder(encoder, checkpoint, device)
        queries = text_queries(enc, texts) if texts else video_queries(enc, video)
    conditions = bridge(translator, queries, steps=steps, samples=samples, guidance=guidance, seed=seed, model=model)
    files = write_conditions(conditions, out, fmt_name)
    s = conditions.settings
    typer.echo(f"bridged {len(conditions)} conditions ({s['source_space'] or 'query side'} -> {s['target_space'] or 'audio'}, "
               f"dim {conditions.dim}, S={s['steps']}, K={s['samples']}, w={s['guidance']:g}) -> {', '.join(map(str, files))}")


@user_errors
def generate_command(
    prompts: List[str] = typer.Argument(..., help="Text prompts, e.g. \"a dog barks\"."),
    pipeline: str = typer.Option(..., "--pipeline", help="diffusers AudioLDM model id in the local cache (cvssp/audioldm-s-full-v2) or a local folder."),
    out_dir: Path = typer.Option(..., "--out-dir", "-o", help="Folder for NNN-prompt.wav and NNN-prompt.json per prompt."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Translator folder (from `train`) on the pipeline's CLAP text/audio spaces; needed with --bridge."),
    bridge: bool = typer.Option(True, "--bridge/--no-bridge", help="Condition on the translated (audio-space) prompt embedding, or on the plain text embedding as AudioLDM does."),
    seconds: Optional[float] = typer.Option(None, "--seconds", help="Length of each clip [the pipeline's default: 5.12 s for cvssp/audioldm-s-full-v2]."),
    steps: int = typer.Option(10, "--steps", min=1, help="Denoising steps of the generator."),
    guidance: float = typer.Option(2.5, "--guidance", help="Classifier-free guidance scale of the generator (above 1 uses the negative embeddings)."),
    seed: int = typer.Option(0, "--seed", help="Seed of prompt i is SEED + i (translation noise and latents)."),
    bridge_steps: Optional[int] = typer.Option(None, "--bridge-steps", min=1, help="S: DDIM steps of the translation [the translator's, else 5]."),
    bridge_samples: Optional[int] = typer.Option(None, "--bridge-samples", min=1, help="K: translations averaged per prompt [the translator's, else 4]."),
    bridge_guidance: Optional[float] = typer.Option(None, "--bridge-guidance", help="Guidance scale w of the translation [the translator's, else 4]."),
    device: Device = typer.Option(Device.auto, "--device"),
) -> None:
    """Generate audio with diffusers' AudioLDMPipeline, conditioned through the DiffGAP bridge.

    Writes one WAV (float32, the pipeline's sample rate) and one JSON sidecar (prompt, seed, settings,
    bridged or not) per prompt. Needs the generate extra: pip install "diffgap-search[generate]".

    Example: diffgap-search generate --model models/audiocaps --pipeline cvssp/audioldm-s-full-v2 "a dog barks" --out-dir gen/
    """
    from diffgap_search.devices import torch_device
    from diffgap_search.generate import generate, load_pipeline

    if bridge and model is None:
        raise DiffgapError("--bridge needs --model DIR (a translator on the pipeline's CLAP spaces); or pass --no-bridge")
    if seconds is not None and not seconds > 0:
        raise DiffgapError(f"--seconds {seconds}: give a positive length in seconds")
    translator = load_translator(model, device) if bridge else None
    pipe = load_pipeline(pipeline, torch_device(device))
    settings = {"pipeline": pipeline, "model": str(model) if bridge else None}
    files = generate(pipe, prompts, out_dir, translator, seconds=seconds, steps=steps, guidance=guidance, seed=seed,
                     bridge_steps=bridge_steps, bridge_samples=bridge_samples, bridge_guidance=bridge_guidance, settings=settings)
    for f in files:
        typer.echo(f"{f.wav}  {f.samples / f.sample_rate:.2f} s at {f.sample_rate} Hz, seed {f.seed}, "
                   f"{'bridged' if bridge else 'not bridged'}: {f.prompt}")
