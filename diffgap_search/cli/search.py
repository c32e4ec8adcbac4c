"""query, calibrate: searching an index, and choosing the translator's search settings."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from diffgap_search.cli.common import Device, format_table, load_translator, log_to_stderr, print_json, user_errors
from diffgap_search.errors import DiffgapError

DISPLAY_COLUMNS = ("path", "caption", "label", "start_s")


@user_errors
def query(
    index_dir: Path = typer.Argument(..., help="Index folder."),
    texts: Optional[List[str]] = typer.Argument(None, help="Text queries, e.g. \"a dog barks\" (need --encoder)."),
    embeddings_file: Optional[Path] = typer.Option(None, "--embeddings-file", help="Query embeddings instead: a parquet shard or a .npy [n, d]."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Translator folder (from `train`): translate queries into the index's space and rerank."),
    encoder: Optional[str] = typer.Option(None, "--encoder", "-E", help="Encoder of texts and media queries, e.g. hf:laion/clap-htsat-unfused."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Weights file of a laion-clap encoder."),
    audio: Optional[List[Path]] = typer.Option(None, "--audio", help="An audio file as a query (repeat for several)."),
    video: Optional[List[Path]] = typer.Option(None, "--video", help="A video file as a query (repeat for several; needs a video --encoder)."),
    queries_file: Optional[Path] = typer.Option(None, "--queries-file", help="Text queries, one per line (or a CSV with a caption column)."),
    k: int = typer.Option(10, "--k", min=1, help="Results per query."),
    candidates: Optional[int] = typer.Option(None, "--candidates", min=1, help="N: candidates taken from the index per query [calibrated, else 100]."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="S: DDIM steps of the translation [calibrated, else 5]."),
    samples: Optional[int] = typer.Option(None, "--samples", min=1, help="K: translations averaged per query [calibrated, else the translator's validated K]."),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="Classifier-free guidance scale of the translation [calibrated, else the translator's validated w]."),
    rerank: Optional[bool] = typer.Option(None, "--rerank/--no-rerank", help="Score candidates with the diffusion signal (weighted as calibrated, 0.5 uncalibrated); default: when its weight is above 0. --rerank reports it even at weight 0."),
    as_json: bool = typer.Option(False, "--json", help="JSON lines: one object per hit, with every signal's score."),
    device: Device = typer.Option(Device.auto, "--device"),
) -> None:
    """Search an index with texts, audio or video files, or embeddings; with --model, through the DiffGAP translator.

    Example: diffgap-search query indexes/clips "a dog barks" "rain on a tin roof" --model models/audiocaps --encoder hf:laion/clap-htsat-unfused

    Example: diffgap-search query indexes/clips --embeddings-file queries.parquet --k 5
    """
    from diffgap_search.engine import Engine
    from diffgap_search.ingest import read_captions

    texts = list(texts or []) + (read_captions([queries_file]) if queries_file else [])
    kinds = {"texts": texts, "audio": audio, "video": video, "embeddings": embeddings_file}
    given = {kind: value for kind, value in kinds.items() if value}
    if not given or (embeddings_file and len(given) > 1):
        raise DiffgapError("give queries as texts, --queries-file, --audio or --video files (with --encoder), "
                           "or as --embeddings-file, not both and not neither")
    if "embeddings" not in given and not encoder:
        raise DiffgapError("texts and media queries need --encoder (e.g. --encoder hf:laion/clap-htsat-unfused)")
    if checkpoint and not encoder:
        raise DiffgapError("--checkpoint goes with --encoder laion-clap:...")
    tuning = {"--candidates": candidates, "--steps": steps, "--samples": samples, "--guidance": guidance}
    if not model and any(v is not None for v in tuning.values()):
        given_option = next(name for name, v in tuning.items() if v is not None)
        raise DiffgapError(f"{given_option} sets how the translator searches; it needs --model DIR")
    engine = Engine.open(index_dir, model, encoder, device=device.value, checkpoint=checkpoint, warn=log_warning)
    first = 0
    for kind, value in given.items():  # one search per kind of query, numbered on in the order given
        results = engine.search(**{kind: value}, k=k, rerank=rerank, candidates=candidates, steps=steps,
                                samples=samples, guidance=guidance)
        results.queries.ids = results.queries.ids + first if kind != "embeddings" else results.queries.ids
        first += len(results)
        print_results(results, as_json)


def log_warning(line: str) -> None:
    typer.echo(f"warning: {line}", err=True)


def print_results(results, as_json: bool) -> None:
    """A table per query, or one JSON line per hit (query id and label, every signal's score, metadata)."""
    queries = results.queries
    for q in range(len(queries)):
        rows, qid, label = results.rows(q), int(queries.ids[q]), queries.labels[q]
        if as_json:
            for row in rows:
                print_json({"query": qid, **({"query_label": label} if label else {}), **row})
            continue
        typer.echo(f"query {qid}" + (f": {label}" if label else ""))
        signals = [c for c in results.signals if results.route.direction is not None]
        shown = [c for c in DISPLAY_COLUMNS if any(c in r for r in rows)]
        typer.echo(format_table(rows, ["rank", "score", *signals, "id", *shown]))
        typer.echo("")


@user_errors
def calibrate_command(
    model: Path = typer.Option(..., "--model", "-m", help="Translator folder (from `train`); the chosen settings go to its calibration.json."),
    pairs: Path = typer.Option(..., "--pairs", "-p", help="Validation pairs parquet (a = audio-space, b = query-side), not the training pairs."),
    split: Optional[str] = typer.Option(None, "--split", help="Use only the rows of this split of the pairs file, e.g. val."),
    samples: Optional[int] = typer.Option(None, "--samples", min=1, help="K: translations averaged per query [the translator's validated K]."),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="Classifier-free guidance scale of the translation [the translator's validated w]."),
    seed: int = typer.Option(0, "--seed", help="Seed of the translation noise and of the diffusion score's draws."),
    device: Device = typer.Option(Device.auto, "--device"),
) -> None:
    """Choose fusion weights, candidates N and steps S of each direction on validation pairs (R@1, then mAP@10).

    `query --model` uses them by default. On its own data the chosen settings are never below raw cosine (when
    the two spaces are one) nor below translation alone.

    Example: diffgap-search calibrate --model models/audiocaps --pairs audiocaps_val.parquet
    """
    from dataclasses import replace

    from diffgap_search.calibrate import calibrate_directions, default_configs, write_calibration
    from diffgap_search.pairs import read_pairs

    translator = load_translator(model, device)
    val = read_pairs(pairs, split=split, dim_a=translator.config.space_a.dim, dim_b=translator.config.space_b.dim)
    base = {d: replace(c, seed=seed, **{k: v for k, v in (("samples", samples), ("guidance", guidance)) if v is not None})
            for d, c in default_configs(translator, stored=False).items()}
    results = calibrate_directions(translator, val, base, progress=True, log=log_to_stderr)
    write_calibration(model, results)
    for direction, result in results.items():
        c = result.config
        weights = ", ".join(f"{name} {w:g}" for name, w in c.weights.items())
        typer.echo(f"calibrated {model} {direction.value} on {result.queries} queries ({result.gallery}-way): weights {weights}; "
                   f"N={c.candidates}, S={c.steps}, K={c.samples}, w={c.guidance:g}")
        rows = [{"signal": name, **scores} for name, scores in result.scores.items()]
        typer.echo(format_table(rows, ["signal", "R@1", "R@5", "R@10", "mAP@10"]))
