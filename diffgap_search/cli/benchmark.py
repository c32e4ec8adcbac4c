"""benchmark: retrieval methods side by side, and the paper's ablations."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from diffgap_search.cli.common import Device, log_to_stderr, user_errors


@user_errors
def benchmark_command(
    pairs: Path = typer.Option(..., "--pairs", "-p", help="Test pairs: a parquet (its split 'test' rows when it has a split column) or a .npy (2, N, D) ([0] audio side, [1] query side)."),
    out: Path = typer.Option(..., "--out", "-o", help="Prefix of the results: PREFIX.md, PREFIX.json, PREFIX-r1.png (and PREFIX-steps.png)."),
    train: Optional[Path] = typer.Option(None, "--train", help="Training pairs (parquet or .npy; rows of split 'test' are left out): baselines are fitted and a translator trained on them."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="A trained translator folder to evaluate instead of training one."),
    methods: Optional[str] = typer.Option(None, "--methods", help="Comma-separated subset of raw,mean-shift,ridge,mlp,infonce,diffgap,rerank,fusion [every one the data allow]."),
    ablate: Optional[str] = typer.Option(None, "--ablate", help="Comma-separated: steps (S 50/20/5), interval (m 1000/5000/10000), components (CDM and BST on/off)."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="Training settings (JSON), e.g. training/paper-audiocaps.json [30 epochs, interval 100, val 10%]."),
    kfold: Optional[int] = typer.Option(None, "--kfold", min=2, help="Split --pairs by clip into K folds: train on K-1, test on one, report the mean."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of training, folds, sampling noise and validation subsets."),
    steps: int = typer.Option(20, "--steps", min=1, help="S: DDIM steps of the DiffGAP translation."),
    device: Device = typer.Option(Device.auto, "--device", help="auto uses a GPU when torch sees one."),
) -> None:
    """Compare retrieval methods side by side in both directions (laion_clap protocol) and run the paper's ablations.

    Example: diffgap-search benchmark --pairs clotho_eval.parquet --train clotho_dev.parquet --out benchmarks/results/xmodel

    Example: diffgap-search benchmark --pairs embeddings/convirt.npy --kfold 5 --out results/convirt --methods raw,ridge,diffgap

    Example: diffgap-search benchmark --pairs demo/pairs.parquet --train demo/pairs.parquet --ablate steps,components --out results/demo
    """
    from diffgap_search.benchmark import BenchmarkOptions, DEFAULT_TRAINING, report_tables, run_benchmark
    from diffgap_search.devices import torch_device
    from diffgap_search.diffusion.train import load_recipe

    if train is None and model is None and kfold is None and methods is None:
        methods = "raw"
    options = BenchmarkOptions(
        methods=tuple(m.strip() for m in methods.split(",") if m.strip()) if methods else None,
        ablate=tuple(a.strip() for a in ablate.split(",") if a.strip()) if ablate else (),
        training=load_recipe(recipe) if recipe else dict(DEFAULT_TRAINING),
        kfold=kfold, seed=seed, steps=steps, device=torch_device(device),
    )
    argv = sys.argv[1:]
    command = " ".join(shlex.quote(a) for a in argv[argv.index("benchmark") + 1:]) if "benchmark" in argv else ""
    record = run_benchmark(pairs, out, train=train, model=model, options=options, command=command, log=log_to_stderr)
    typer.echo(report_tables(record))
    typer.echo(f"\nwrote {out}.md, {out}.json, {out}-r1.png" + (f", {out}-steps.png" if "steps" in record["ablations"] else "")
               + f" in {record['wall_s']:.0f} s")
