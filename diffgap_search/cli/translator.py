"""train, translate: the DiffGAP translator."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from diffgap_search.cli.common import Device, load_translator, user_errors
from diffgap_search.devices import torch_device
from diffgap_search.types import Direction


class PredictionType(str, Enum):
    epsilon = "epsilon"
    sample = "sample"
    v_prediction = "v_prediction"


@user_errors
def train_command(
    pairs: Path = typer.Option(..., "--pairs", "-p", help="Pairs parquet (a = audio-space, b = query-side embeddings)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the translator, its training state and logs."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="JSON settings, e.g. training/paper-audiocaps.json; options below override it."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Passes over the training pairs [30]."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Pairs per step [64]."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Adam learning rate [2e-4]."),
    interval: Optional[int] = typer.Option(None, "--interval", min=1, help="m: the direction flips every m steps [100]."),
    bidirectional: Optional[bool] = typer.Option(None, "--bidirectional/--no-bidirectional", help="Train both directions (BST), or only query->audio [bidirectional]."),
    val_fraction: Optional[float] = typer.Option(None, "--val-fraction", help="Share of clips held out for validation when the file has no val split [0.05]."),
    val_every: Optional[int] = typer.Option(None, "--val-every", min=0, help="Steps between validations (each a candidate for the kept translator), besides every epoch's end; 0 = epoch ends only [500]."),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", min=1, help="Steps between training-state saves [1000]."),
    prediction_type: Optional[PredictionType] = typer.Option(None, "--prediction-type", help="What the network predicts [sample]."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help="Stop after this many steps in total."),
    contrastive_weight: Optional[float] = typer.Option(None, "--contrastive-weight", help="Weight of the InfoNCE term on the clean-target estimate; 0 = the paper's pure denoising loss [0.3]."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of weights, order and noise [0]."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run saved in --out exactly where it stopped."),
    device: Device = typer.Option(Device.auto, "--device", help="auto uses a GPU when torch sees one."),
) -> None:
    """Train a DiffGAP translator on a pairs file (bidirectional split training).

    Example: diffgap-search train --pairs demo/pairs.parquet --out models/demo --recipe training/tiny.json
    """
    from dataclasses import replace

    from diffgap_search.diffusion.train import TrainConfig, load_recipe, steps_done, train

    config = TrainConfig.from_dict(load_recipe(recipe) if recipe else {}, str(recipe) if recipe else "settings")
    overrides = dict(epochs=epochs, batch_size=batch_size, lr=lr, interval=interval, bidirectional=bidirectional,
                     val_fraction=val_fraction, val_every=val_every, checkpoint_every=checkpoint_every, max_steps=max_steps, seed=seed,
                     contrastive_weight=contrastive_weight)
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    config.validate("options")
    if prediction_type is not None:
        config = replace(config, schedule=replace(config.schedule, prediction_type=prediction_type.value))
    try:
        translator = train(pairs, out, config, resume=resume, device=torch_device(device), log=typer.echo)
    except KeyboardInterrupt:
        typer.echo(f"interrupted; the last saved state is in {out}: continue with --resume", err=True)
        raise typer.Exit(130) from None
    training = translator.config.training
    chosen = training.get("epoch", {})
    summary = f"saved {out}: {translator.parameter_count:,} parameters, {steps_done(out)} steps"
    if "val_R@1" in chosen:
        summary += (f"; kept step {chosen['step']} of epoch {chosen['epoch']} ({training.get('selected')}): validation translated R@1 "
                    f"{chosen['val_R@1']:.3f} ({chosen['val_N']} queries, {chosen['val_gallery']}-way)")
    typer.echo(summary)


@user_errors
def translate_command(
    model: Path = typer.Option(..., "--model", "-m", help="Translator folder (from `train`)."),
    input: Path = typer.Option(..., "--input", "-i", help="Embeddings to translate: a parquet shard or a .npy."),
    out: Path = typer.Option(..., "--out", "-o", help="Output: .parquet (ids and metadata kept) or .npy."),
    direction: Direction = typer.Option(Direction.TO_AUDIO, "--direction", help="to-audio: query side -> audio space; from-audio: the reverse."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="DDIM sampling steps S [the translator's, else 5]."),
    samples: Optional[int] = typer.Option(None, "--samples", min=1, help="Samples K averaged per input [the translator's, else 4]."),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="Classifier-free guidance scale w, 1 = conditional only [the translator's, else 4]."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampling noise."),
    device: Device = typer.Option(Device.auto, "--device"),
) -> None:
    """Translate embeddings into the other space with a trained translator.

    Example: diffgap-search translate --model models/demo --input demo/queries.parquet --out demo/queries_audio.parquet
    """
    from diffgap_search.bridge import translate_file

    translator = load_translator(model, device)
    n, sampling = translate_file(translator, input, out, direction, steps=steps, samples=samples, guidance=guidance, seed=seed)
    typer.echo(f"translated {n} vectors ({direction.value}, S={sampling.steps}, K={sampling.samples}, "
               f"w={sampling.guidance:g}) -> {out}")
