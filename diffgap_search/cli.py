"""`diffgap-search` command line: each command parses, validates, calls one library function, prints.

Bad input surfaces as one line `error: ...` on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from diffgap_search.errors import DiffgapError

app = typer.Typer(
    name="diffgap-search",
    help="Audio retrieval over CLAP embeddings with FAISS, bridged across the modality gap by DiffGAP.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class IndexType(str, Enum):
    auto = "auto"
    flat = "flat"
    hnsw = "hnsw"
    ivfpq = "ivfpq"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def user_errors(fn):
    """Turn DiffgapError (and Ctrl-C) into one line on stderr and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DiffgapError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted; nothing was changed", err=True)
            raise typer.Exit(130) from None
        except MemoryError:
            typer.echo("error: out of memory; lower --memory-budget or index fewer vectors at a time", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, default=_json_default) + "\n")


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


# ---------------------------------------------------------------------------
# build-index / add / info
# ---------------------------------------------------------------------------


@app.command("build-index")
@user_errors
def build_index(
    media: Optional[List[Path]] = typer.Argument(None, help="Audio/video files or folders to embed first (needs --encoder)."),
    embeddings: Optional[List[Path]] = typer.Option(None, "--embeddings", "-e", help="Parquet shards (id, embedding, metadata), or one .npy [n, d]. Repeat for several."),
    encoder: Optional[str] = typer.Option(None, "--encoder", "-E", help="Embed MEDIA with this encoder first, e.g. hf:laion/clap-htsat-unfused or laion-clap:HTSAT-tiny (with --checkpoint)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Weights file of a laion-clap encoder, e.g. 630k-audioset-best.pt (read as tensors only, never unpickled)."),
    out: Path = typer.Option(..., "--out", "-o", help="Index folder to write (replaced atomically if it exists)."),
    index_type: IndexType = typer.Option(IndexType.auto, "--index-type", help="auto: flat up to 1M vectors within the budget, then HNSW, then IVF-PQ."),
    space: Optional[str] = typer.Option(None, "--space", help="Name of the embedding space (default: from the shards' metadata)."),
    device: Device = typer.Option(Device.auto, "--device", help="auto uses a GPU when FAISS sees one."),
    memory_budget: str = typer.Option("4GB", "--memory-budget", help="Memory the index may use, e.g. 4GB, 512MB."),
    recall_target: float = typer.Option(0.95, "--recall-target", help="recall@10 against exact search that tuning must reach."),
    metadata: Optional[Path] = typer.Option(None, "--metadata", help="Parquet or CSV rows for a .npy input, same order (an `id` column gives ids)."),
) -> None:
    """Build a FAISS index folder from embedding shards, or from audio files with --encoder.

    Example: diffgap-search build-index --embeddings corpus/*.parquet --out indexes/clips

    Example: diffgap-search build-index clips/ --encoder hf:laion/clap-htsat-unfused --out indexes/clips
    (embeddings are cached in indexes/clips.embeddings.parquet: a re-run embeds only new files)

    Example: diffgap-search build-index clips/ --encoder laion-clap:HTSAT-tiny --checkpoint 630k-audioset-best.pt --out indexes/clips
    """
    from diffgap_search.index import EmbeddingIndex

    if media and not encoder:
        raise DiffgapError("media inputs need --encoder (e.g. --encoder hf:laion/clap-htsat-unfused); or pass --embeddings")
    if encoder and not media:
        raise DiffgapError("--encoder needs audio files or folders to embed (build-index clips/ --encoder ...)")
    if checkpoint and not encoder:
        raise DiffgapError("--checkpoint goes with --encoder laion-clap:... (build-index clips/ --encoder laion-clap:HTSAT-tiny --checkpoint FILE)")
    if bool(media) == bool(embeddings):
        raise DiffgapError("give either --embeddings shards or media files with --encoder, not both and not neither")
    if media:
        from diffgap_search.encoders import load_encoder
        from diffgap_search.ingest import embed_media

        cache = out.parent / f"{out.name}.embeddings.parquet"
        report = embed_media(load_encoder(encoder, device=torch_device(device), checkpoint=checkpoint), list(media), cache)
        typer.echo(f"embedded {report.embedded} files ({report.skipped} cached, {len(report.failed)} failed"
                   + (f": see {cache.parent / (cache.stem + '.errors.csv')}" if report.failed else "") + ")", err=True)
        embeddings = [cache]
    index = EmbeddingIndex.build(
        embeddings, out, index_type=index_type.value, space=space, device=device.value,
        memory_budget=memory_budget, recall_target=recall_target, metadata=metadata,
    )
    m = index.manifest
    typer.echo(
        f"built {out}: {m['count']} vectors, dim {m['dim']}, {m['index_type']} ({m['factory']}), "
        f"recall@10 {m['tuned_recall_at_10']:.3f} with {m['search_params'] or 'exact search'}"
    )


@app.command("add")
@user_errors
def add(
    index_dir: Path = typer.Argument(..., help="Existing index folder."),
    embeddings: List[Path] = typer.Option(..., "--embeddings", "-e", help="Parquet shards or one .npy to append."),
    metadata: Optional[Path] = typer.Option(None, "--metadata", help="Rows for a .npy input, same order."),
) -> None:
    """Append embeddings to an index without rebuilding it; new ids continue after the largest.

    Example: diffgap-search add indexes/clips --embeddings new_clips.parquet
    """
    from diffgap_search.index import EmbeddingIndex

    before = EmbeddingIndex.load(index_dir, device="cpu")
    after = before.add(embeddings, metadata=metadata)
    typer.echo(f"added {len(after) - len(before)} vectors to {index_dir}: {len(after)} in all")


@app.command("info")
@user_errors
def info(
    index_dir: Path = typer.Argument(..., help="Index folder."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Show what an index holds: count, dim, space, type, bytes on disk, dates.

    Example: diffgap-search info indexes/clips
    """
    from diffgap_search.index import EmbeddingIndex

    facts = EmbeddingIndex.load(index_dir, device="cpu").info()
    if as_json:
        _print_json(facts)
        return
    width = max(map(len, facts))
    for key, value in facts.items():
        typer.echo(f"{key:<{width}}  {value}")


# ---------------------------------------------------------------------------
# query
# ---------------------------------------------------------------------------


def _format_table(rows: list[dict], columns: list[str]) -> str:
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    text = str(value)
    return text if len(text) <= 60 else text[:24] + "..." + text[-33:]  # both ends: a path keeps its file name


DISPLAY_COLUMNS = ("path", "caption", "label", "start_s")


@app.command("query")
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
    samples: Optional[int] = typer.Option(None, "--samples", min=1, help="K: translations averaged per query [calibrated, else 1]."),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="Classifier-free guidance scale of the translation [calibrated, else 1]."),
    rerank: Optional[bool] = typer.Option(None, "--rerank/--no-rerank", help="Score candidates with the diffusion signal (weighted as calibrated, 0.5 uncalibrated); default: when its weight is above 0. --rerank reports it even at weight 0."),
    as_json: bool = typer.Option(False, "--json", help="JSON lines: one object per hit, with every signal's score."),
    device: Device = typer.Option(Device.auto, "--device"),
) -> None:
    """Search an index with texts, audio or video files, or embeddings; with --model, through the DiffGAP translator.

    Example: diffgap-search query indexes/clips "a dog barks" "rain on a tin roof" --model models/audiocaps --encoder hf:laion/clap-htsat-unfused

    Example: diffgap-search query indexes/clips --embeddings-file queries.parquet --k 5
    """
    from diffgap_search.index import EmbeddingIndex
    from diffgap_search.search import Searcher

    texts = list(texts or []) + (_read_queries_file(queries_file) if queries_file else [])
    media = bool(texts or audio or video)
    if media == bool(embeddings_file):
        raise DiffgapError("give queries as texts, --queries-file, --audio or --video files (with --encoder), "
                           "or as --embeddings-file, not both and not neither")
    if media and not encoder:
        raise DiffgapError("texts and media queries need --encoder (e.g. --encoder hf:laion/clap-htsat-unfused)")
    if checkpoint and not encoder:
        raise DiffgapError("--checkpoint goes with --encoder laion-clap:...")
    tuning = {"--candidates": candidates, "--steps": steps, "--samples": samples, "--guidance": guidance}
    if not model and any(v is not None for v in tuning.values()):
        given = next(name for name, v in tuning.items() if v is not None)
        raise DiffgapError(f"{given} sets how the translator searches; it needs --model DIR")
    index = EmbeddingIndex.load(index_dir, device=device.value)
    translator = _load_translator(model, device) if model else None
    searcher = Searcher(index, translator, _load_query_encoder(encoder, checkpoint, device) if encoder else None)
    if translator is not None:
        from diffgap_search.search import with_overrides

        searcher.config = with_overrides(searcher.config, candidates=candidates, steps=steps, samples=samples, guidance=guidance)
    if embeddings_file:
        rankings = [searcher.search(_embedding_queries(embeddings_file), k, rerank=rerank)]
    else:
        rankings = searcher.query(texts, audio or [], video or [], k=k, rerank=rerank)
    _print_rankings(rankings, as_json)


def _read_queries_file(path: Path) -> list[str]:
    from diffgap_search.ingest import read_captions

    return read_captions([path])


def _load_translator(model: Path, device: Device):
    from diffgap_search.diffusion.translator import Translator

    return Translator.load(model, torch_device(device))


def _load_query_encoder(spec: str, checkpoint: Optional[Path], device: Device):
    from diffgap_search.encoders import load_encoder

    return load_encoder(spec, device=torch_device(device), checkpoint=checkpoint)


def _embedding_queries(path: Path):
    """Queries from a shard or .npy: ids, space and a label (caption, path or label column) per row."""
    from diffgap_search.search import Queries
    from diffgap_search.storage import read_embeddings

    emb = read_embeddings(path)
    meta = emb.metadata.to_pylist() if emb.metadata.num_columns else [{}] * len(emb)
    labels = [next((str(m[c]) for c in ("caption", "path", "label") if m.get(c) is not None), "") for m in meta]
    return Queries(emb.vectors, emb.space, emb.modality, labels, emb.ids)


def _print_rankings(rankings, as_json: bool) -> None:
    """A table per query, or one JSON line per hit (query id and label, every signal's score, metadata)."""
    for ranking in rankings:
        queries = ranking.queries
        for q in range(len(queries)):
            rows, qid, label = ranking.rows(q), int(queries.ids[q]), queries.labels[q]
            if as_json:
                for row in rows:
                    _print_json({"query": qid, **({"query_label": label} if label else {}), **row})
                continue
            typer.echo(f"query {qid}" + (f": {label}" if label else ""))
            signals = [c for c in ("raw", "translated", "diffusion") if c in ranking.signals and ranking.route.direction is not None]
            shown = [c for c in DISPLAY_COLUMNS if any(c in r for r in rows)]
            typer.echo(_format_table(rows, ["rank", "score", *signals, "id", *shown]))
            typer.echo("")


@app.command("calibrate")
@user_errors
def calibrate_command(
    model: Path = typer.Option(..., "--model", "-m", help="Translator folder (from `train`); its config.json gets the chosen settings."),
    pairs: Path = typer.Option(..., "--pairs", "-p", help="Validation pairs parquet (a = audio-space, b = query-side), not the training pairs."),
    split: Optional[str] = typer.Option(None, "--split", help="Use only the rows of this split of the pairs file, e.g. val."),
    samples: int = typer.Option(1, "--samples", min=1, help="K: translations averaged per query."),
    guidance: float = typer.Option(1.0, "--guidance", help="Classifier-free guidance scale of the translation."),
    seed: int = typer.Option(0, "--seed", help="Seed of the translation noise and of the diffusion score's draws."),
    device: Device = typer.Option(Device.auto, "--device"),
) -> None:
    """Choose fusion weights, candidates N and steps S on validation pairs (R@1, then mAP@10) and store them in the translator.

    `query --model` uses them by default. On its own data the chosen settings are never below raw cosine (when
    the two spaces are one) nor below translation alone.

    Example: diffgap-search calibrate --model models/audiocaps --pairs audiocaps_val.parquet
    """
    from diffgap_search.calibrate import calibrate, write_calibration
    from diffgap_search.pairs import read_pairs
    from diffgap_search.rerank import FusionConfig

    translator = _load_translator(model, device)
    val = read_pairs(pairs, split=split, dim_a=translator.config.space_a.dim, dim_b=translator.config.space_b.dim)
    base = FusionConfig(samples=samples, guidance=guidance, seed=seed)
    result = calibrate(translator, val, base, log=lambda line: typer.echo(line, err=True))
    write_calibration(model, result)
    c = result.config
    typer.echo(f"calibrated {model} on {result.queries} queries ({result.gallery}-way): weights raw {c.raw:g}, "
               f"translated {c.translated:g}, diffusion {c.diffusion:g}; N={c.candidates}, S={c.steps}")
    rows = [{"signal": name, **scores} for name, scores in result.scores.items()]
    typer.echo(_format_table(rows, ["signal", "R@1", "R@5", "R@10", "mAP@10"]))


# ---------------------------------------------------------------------------
# synthetic data
# ---------------------------------------------------------------------------


@app.command("synthetic")
@user_errors
def synthetic(
    out: Path = typer.Option(..., "--out", "-o", help="Folder for corpus.parquet, queries.parquet and pairs.parquet."),
    n: int = typer.Option(10_000, "--n", min=1, help="Number of pairs (100 to 1,000,000)."),
    n_queries: int = typer.Option(5, "--queries", min=0, help="How many query rows to write to queries.parquet."),
    dim_a: int = typer.Option(512, "--dim-a", help="Dim of the index side (audio)."),
    dim_b: int = typer.Option(512, "--dim-b", help="Dim of the query side (text/video)."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Write a seeded synthetic paired corpus with a modality gap (for trying the tool, tests, benchmarks).

    Example: diffgap-search synthetic --n 10000 --out demo
    """
    from diffgap_search.synthetic import GapConfig, write_synthetic

    files = write_synthetic(out, n, GapConfig(dim_a=dim_a, dim_b=dim_b), seed=seed, n_queries=n_queries)
    stats = files.pop("stats")
    for role, path in files.items():
        typer.echo(f"{role:<8} {path}")
    if stats["raw_r1"] is not None:
        typer.echo(
            f"gap      raw-cosine R@1 {stats['raw_r1']:.3f} ({stats['n_way']}-way), distance between the "
            f"modality means {stats['mean_distance']:.3f} (real CLAP-like pairs: about 0.8)"
        )


@app.command("demo")
@user_errors
def demo(
    out: Path = typer.Option(Path("demo"), "--out", "-o", help="Folder for everything the demo writes (a previous demo's folder is replaced whole)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the corpus, the training and the search noise."),
    quick: bool = typer.Option(False, "--quick", help="3,000 pairs instead of 10,000: about a quarter of the time, for tests."),
) -> None:
    """Run the whole engine offline on a synthetic corpus: train a small translator, index, calibrate, search, score.

    Prints R@1/5/10 and mAP@10 of raw cosine, translated, translated + rerank and calibrated fusion, a few
    example queries, and the same pipeline as commands for real data. The data are synthetic: the numbers
    show how the engine works, not its quality on real sounds. About a minute on a 2-core laptop.

    Example: diffgap-search demo

    Example: diffgap-search demo --out /tmp/demo --seed 1 --quick
    """
    from diffgap_search.demo import DEFAULT_N, QUICK_N, run_demo

    run_demo(out, n=QUICK_N if quick else DEFAULT_N, seed=seed, log=typer.echo)


# ---------------------------------------------------------------------------
# the DiffGAP translator: train / translate
# ---------------------------------------------------------------------------


class Direction(str, Enum):
    to_audio = "to-audio"
    from_audio = "from-audio"


class PredictionType(str, Enum):
    epsilon = "epsilon"
    sample = "sample"
    v_prediction = "v_prediction"


def torch_device(device: Device) -> str:
    import torch

    if device == Device.auto:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == Device.cuda and not torch.cuda.is_available():
        raise DiffgapError("--device cuda was asked for but torch sees no GPU; use --device cpu or auto")
    return device.value


def run_steps(out: Path) -> int:
    """Steps done by the run in `out` (its log's last row)."""
    log = out / "log.jsonl"
    lines = log.read_text().splitlines() if log.exists() else []
    return json.loads(lines[-1])["step"] if lines else 0


@app.command("train")
@user_errors
def train_command(
    pairs: Path = typer.Option(..., "--pairs", "-p", help="Pairs parquet (a = audio-space, b = query-side embeddings)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the translator, its training state and logs."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="JSON settings, e.g. training/audiocaps.json; options below override it."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Passes over the training pairs [30]."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Pairs per step [64]."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Adam learning rate [2e-4]."),
    interval: Optional[int] = typer.Option(None, "--interval", min=1, help="m: the direction flips every m steps [5000]."),
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

    from diffgap_search.diffusion.train import TrainConfig, load_recipe, train

    settings = load_recipe(recipe) if recipe else {}
    config = TrainConfig.from_dict(settings, str(recipe) if recipe else "settings")
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
    summary = f"saved {out}: {translator.parameter_count:,} parameters, {run_steps(out)} steps"
    if "val_R@1" in chosen:
        summary += (f"; kept step {chosen['step']} of epoch {chosen['epoch']} ({training.get('selected')}): validation translated R@1 "
                    f"{chosen['val_R@1']:.3f} ({chosen['val_N']} queries, {chosen['val_gallery']}-way)")
    typer.echo(summary)


@app.command("translate")
@user_errors
def translate_command(
    model: Path = typer.Option(..., "--model", "-m", help="Translator folder (from `train`)."),
    input: Path = typer.Option(..., "--input", "-i", help="Embeddings to translate: a parquet shard or a .npy."),
    out: Path = typer.Option(..., "--out", "-o", help="Output: .parquet (ids and metadata kept) or .npy."),
    direction: Direction = typer.Option(Direction.to_audio, "--direction", help="to-audio: query side -> audio space; from-audio: the reverse."),
    steps: int = typer.Option(5, "--steps", min=1, help="DDIM sampling steps S."),
    samples: int = typer.Option(1, "--samples", min=1, help="Samples K averaged per input."),
    guidance: float = typer.Option(1.0, "--guidance", help="Classifier-free guidance scale w (1 = conditional only)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampling noise."),
    device: Device = typer.Option(Device.auto, "--device"),
) -> None:
    """Translate embeddings into the other space with a trained translator.

    Example: diffgap-search translate --model models/demo --input demo/queries.parquet --out demo/queries_audio.parquet
    """
    import numpy as np
    import torch

    from diffgap_search.diffusion.translator import Translator
    from diffgap_search.storage import read_embeddings, write_shard

    if out.suffix not in (".parquet", ".npy"):
        raise DiffgapError(f"--out {out}: use a .parquet or .npy file name")
    translator = Translator.load(model, torch_device(device))
    source_dim, _ = translator.dims(direction.value)
    source, target = ((translator.config.space_b, translator.config.space_a) if direction == Direction.to_audio
                      else (translator.config.space_a, translator.config.space_b))
    emb = read_embeddings(input, dim=source_dim)
    if emb.space and source.name and emb.space != source.name:
        raise DiffgapError(f"{input}: embeddings are in space {emb.space!r}, the translator's {direction.value} input is {source.name!r}")
    x = translator.translate(emb.vectors, direction.value, steps=steps, samples=samples, guidance=guidance,
                             generator=torch.Generator().manual_seed(seed))
    if out.suffix == ".npy":
        import os
        import tempfile

        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".npy", dir=out.parent)
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, x)
        os.replace(tmp, out)
    else:
        write_shard(out, emb.ids, x, emb.metadata, space=target.name, modality=target.modality)
    typer.echo(f"translated {len(x)} vectors ({direction.value}, S={steps}, K={samples}, w={guidance}) -> {out}")


# ---------------------------------------------------------------------------
# encoders: embed
# ---------------------------------------------------------------------------


class Modality(str, Enum):
    audio = "audio"
    text = "text"
    video = "video"


@app.command("embed")
@user_errors
def embed_command(
    inputs: List[Path] = typer.Argument(..., help="Audio/video files, folders (searched recursively), CSV manifests; for text: caption files or CSVs."),
    encoder: str = typer.Option(..., "--encoder", "-E", help="Encoder spec: hf:laion/clap-htsat-unfused or hf:/path/to/clap (audio, text), laion-clap:HTSAT-tiny[+fusion] with --checkpoint (audio, text), hf:openai/clip-vit-base-patch32 (video frames), precomputed:feats.parquet (features by file name)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Weights file of a laion-clap encoder, e.g. 630k-audioset-best.pt (read as tensors only, never unpickled)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output shard (.parquet); re-running skips files already in it."),
    modality: Modality = typer.Option(Modality.audio, "--modality", help="audio (also the audio track of videos), video (frames) or text (captions)."),
    per_window: bool = typer.Option(False, "--per-window", help="One row per 10 s window (with start_s) instead of one per file (audio)."),
    frames: int = typer.Option(8, "--frames", min=1, help="Frames sampled uniformly per video clip (video)."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Windows, frames or captions per forward pass."),
    device: Device = typer.Option(Device.auto, "--device"),
) -> None:
    """Embed audio, video or captions into a parquet shard (resumable; undecodable files are listed, not fatal).

    Example: diffgap-search embed --encoder hf:laion/clap-htsat-unfused clips/ --out clips.parquet

    Example: diffgap-search embed --encoder laion-clap:HTSAT-tiny --checkpoint 630k-audioset-best.pt clips/ --out clips.parquet

    Example: diffgap-search embed --encoder hf:openai/clip-vit-base-patch32 --modality video videos/ --out video.parquet
    """
    from diffgap_search.encoders import load_encoder
    from diffgap_search.ingest import embed_captions, embed_media

    enc = load_encoder(encoder, device=torch_device(device), batch_size=batch_size, checkpoint=checkpoint,
                       num_frames=frames if modality == Modality.video else None)
    if modality == Modality.text:
        if not hasattr(enc, "encode_text"):
            raise DiffgapError(f"encoder {encoder} does not embed text; use a CLAP encoder for captions")
        report = embed_captions(enc, inputs, out, batch=batch_size)
    else:
        report = embed_media(enc, inputs, out, per_window=per_window, modality=modality.value)
    rate = report.embedded / report.seconds if report.seconds else 0.0
    typer.echo(f"{out}: {report.rows} rows in space {enc.space!r} (dim {enc.dim}); embedded {report.embedded} "
               f"({rate:.1f}/s), skipped {report.skipped} already embedded, {len(report.failed)} failed")
    if report.failed:
        for path, reason in report.failed[:5]:
            typer.echo(f"  failed: {path}: {reason}", err=True)
        more = len(report.failed) - 5
        typer.echo(f"  {'and ' + str(more) + ' more; ' if more > 0 else ''}all in {out.parent / (out.stem + '.errors.csv')}", err=True)


@app.command("pair")
@user_errors
def pair_command(
    audio: Path = typer.Argument(..., help="Audio-space shard (one row per clip), e.g. from embed --modality audio."),
    query: Path = typer.Argument(..., help="Query-side shard (video or text) with the same key column."),
    out: Path = typer.Option(..., "--out", "-o", help="Pairs file to write (.parquet), for train."),
    on: str = typer.Option("path", "--on", help="Key column present in both shards."),
) -> None:
    """Join an audio shard and a video (or text) shard on a key column into a pairs file for training.

    Example: diffgap-search embed -E hf:laion/clap-htsat-unfused videos/ -o audio.parquet &&
    diffgap-search embed -E hf:openai/clip-vit-base-patch32 --modality video videos/ -o video.parquet &&
    diffgap-search pair audio.parquet video.parquet -o pairs.parquet
    """
    from diffgap_search.pairs import pair_shards

    report = pair_shards(audio, query, out, on=on)
    typer.echo(f"{out}: {report.pairs} pairs of {report.groups} clips"
               + (f"; {report.unmatched} rows of {query} had no audio row and were left out" if report.unmatched else ""))


# ---------------------------------------------------------------------------
# datasets: prepare
# ---------------------------------------------------------------------------


class Dataset(str, Enum):
    audiocaps = "audiocaps"
    clotho = "clotho"
    vggsound = "vggsound"


class Split(str, Enum):
    train = "train"
    val = "val"
    test = "test"


@app.command("prepare")
@user_errors
def prepare_command(
    dataset: Dataset = typer.Argument(..., help="The manifest's dataset: audiocaps, clotho or vggsound."),
    manifest: Path = typer.Option(..., "--manifest", help="AudioCaps test.csv (audiocap_id,youtube_id,start_time,caption), Clotho clotho_captions_evaluation.csv (file_name,caption_1..5), VGGSound's test list (<ytid>_<start>.mp4,label) or vggsound.csv (ytid,start,label,split)."),
    out: Path = typer.Option(..., "--out", "-o", help="Pairs file to write (.parquet), for train and benchmark; clips left out are listed in OUT.missing.csv beside it."),
    audio_dir: Optional[Path] = typer.Option(None, "--audio-dir", help="Folder of the clips' audio (or videos: their audio track), searched recursively for the names the dataset's files go by."),
    audio_encoder: Optional[str] = typer.Option(None, "--audio-encoder", help="Encoder of --audio-dir, e.g. laion-clap:HTSAT-base (with --checkpoint) or hf:laion/clap-htsat-unfused."),
    text_encoder: Optional[str] = typer.Option(None, "--text-encoder", help="Encoder of the captions (VGGSound: of the labels) [--audio-encoder: CLAP embeds both]."),
    video_dir: Optional[Path] = typer.Option(None, "--video-dir", help="Folder of the clips' videos, for --video-encoder [--audio-dir]."),
    video_encoder: Optional[str] = typer.Option(None, "--video-encoder", help="Encoder of the video frames, e.g. hf:openai/clip-vit-base-patch32, or precomputed:cavp.parquet (features by file name)."),
    audio_embeddings: Optional[Path] = typer.Option(None, "--audio-embeddings", help="Audio embeddings made before, instead of --audio-dir: a shard from `embed` (path column) or a .npy with its keys in FILE.csv."),
    query_embeddings: Optional[Path] = typer.Option(None, "--query-embeddings", help="Query embeddings made before: captions from `embed MANIFEST.csv --modality text` (found by caption text) or video features such as CAVP (found by file name)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Weights file of the laion-clap encoder(s), e.g. 630k-audioset-best.pt (read as tensors only)."),
    split: Optional[Split] = typer.Option(None, "--split", help="vggsound.csv: keep this split's rows. Other manifests are one split each: written in the pairs' split column."),
    frames: int = typer.Option(8, "--frames", min=1, help="Frames sampled per video clip (--video-encoder)."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Windows, frames or captions per forward pass."),
    device: Device = typer.Option(Device.auto, "--device"),
) -> None:
    """Turn a dataset manifest into a pairs file: embed each clip's audio and its captions (or video), from media
    folders or from embeddings made before. Clips whose media or embeddings are missing are listed and counted,
    never fatal; media embeddings are kept in OUT.audio.parquet / OUT.video.parquet, so a re-run embeds only new files.

    Example: diffgap-search prepare audiocaps --manifest audiocaps/test.csv --audio-dir audiocaps/test --audio-encoder laion-clap:HTSAT-base --checkpoint music_speech_audioset_epoch_15_esc_89.98.pt --split test --out pairs/audiocaps_test.parquet

    Example: diffgap-search prepare clotho --manifest clotho_captions_evaluation.csv --audio-dir clotho/evaluation --audio-encoder hf:laion/clap-htsat-unfused --split test --out pairs/clotho_eval.parquet

    Example: diffgap-search prepare vggsound --manifest vggsound.csv --split test --audio-dir vggsound/video --audio-encoder hf:laion/clap-htsat-unfused --video-encoder hf:openai/clip-vit-base-patch32 --out pairs/vggsound_test.parquet

    Example: diffgap-search prepare audiocaps --manifest test.csv --audio-embeddings audio.parquet --query-embeddings captions.parquet --out pairs/audiocaps_test.parquet
    """
    from diffgap_search.datasets import QUERY_MODALITY, EmbeddingSource, MediaSource, prepare_pairs, read_manifest
    from diffgap_search.encoders import load_encoder

    if bool(audio_dir) != bool(audio_encoder):
        raise DiffgapError("--audio-dir and --audio-encoder go together (the folder and the encoder of its clips)")
    if bool(audio_dir) == bool(audio_embeddings):
        raise DiffgapError("give the audio as --audio-dir DIR --audio-encoder SPEC, or as --audio-embeddings FILE "
                           "(not both and not neither)")
    if sum(map(bool, (text_encoder, video_encoder, query_embeddings))) > 1:
        raise DiffgapError("give the queries one way: --text-encoder, --video-encoder or --query-embeddings")
    if video_dir and not video_encoder:
        raise DiffgapError("--video-dir needs --video-encoder (e.g. hf:openai/clip-vit-base-patch32)")
    specs = [s for s in (audio_encoder, text_encoder, video_encoder) if s]
    if checkpoint and not any(s.startswith("laion-clap:") for s in specs):
        raise DiffgapError("--checkpoint is the weights file of a laion-clap:... encoder; no encoder here is one")
    if video_encoder:
        modality = "video"
    elif text_encoder:
        modality = "text"
    elif query_embeddings:
        modality = QUERY_MODALITY[dataset.value]
    elif dataset == Dataset.vggsound:
        raise DiffgapError("VGGSound queries are videos: give --video-encoder (frames of --video-dir, default "
                           "--audio-dir) or --query-embeddings FILE (e.g. CAVP features); --text-encoder uses the labels")
    else:
        modality, text_encoder = "text", audio_encoder  # a CLAP encoder embeds both
    if modality == "video" and not (video_dir or audio_dir or query_embeddings):
        raise DiffgapError("--video-encoder needs --video-dir DIR (the videos of the clips)")

    clips = read_manifest(dataset.value, manifest, split=split.value if split else None)
    loaded: dict[str, object] = {}

    def encoder(spec: str, num_frames: int | None = None):
        if spec not in loaded:
            loaded[spec] = load_encoder(spec, device=torch_device(device), batch_size=batch_size, num_frames=num_frames,
                                        checkpoint=checkpoint if spec.startswith("laion-clap:") else None)
        return loaded[spec]

    audio = MediaSource(audio_dir, encoder(audio_encoder)) if audio_dir else EmbeddingSource(audio_embeddings)
    if query_embeddings:
        query = EmbeddingSource(query_embeddings)
    elif modality == "video":
        query = MediaSource(video_dir or audio_dir, encoder(video_encoder, num_frames=frames))
    else:
        query = MediaSource(audio_dir, encoder(text_encoder))
    report = prepare_pairs(clips, out, audio=audio, query=query, query_modality=modality)
    typer.echo(f"{out}: {report.pairs} pairs of {report.paired_clips} clips ({dataset.value} {manifest.name}: "
               f"{report.clips} clips" + (f", split {split.value}" if split else "") + f", {modality} queries); "
               f"{report.missing_clips} clips left out"
               + (" (" + ", ".join(f"{n} without {side}" for side, n in report.left_out.items()) + ")" if report.left_out else "")
               + (f"; {report.duplicates} repeated manifest rows skipped" if report.duplicates else ""))
    if report.missing:
        for clip_id, side, reason in report.missing[:3]:
            typer.echo(f"  missing {side}: {clip_id}: {reason}", err=True)
        more = len(report.missing) - 3
        typer.echo(f"  {'and ' + str(more) + ' more; ' if more > 0 else ''}all in {report.missing_csv}", err=True)
    if report.caches:
        typer.echo(f"media embeddings kept in {', '.join(map(str, report.caches))} (a re-run embeds only new files)", err=True)


# ---------------------------------------------------------------------------
# the generation bridge: bridge / generate
# ---------------------------------------------------------------------------


class ConditionFormat(str, Enum):
    npy = "npy"
    parquet = "parquet"
    pt = "pt"


@app.command("bridge")
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
    steps: int = typer.Option(5, "--steps", min=1, help="S: DDIM steps of the translation."),
    samples: int = typer.Option(1, "--samples", min=1, help="K: translations averaged per input."),
    guidance: float = typer.Option(1.0, "--guidance", help="Classifier-free guidance scale w of the translation (1 = conditional only)."),
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
    from diffgap_search.search import text_queries, video_queries

    texts = list(text or []) + (_read_queries_file(texts_file) if texts_file else [])
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
    translator = _load_translator(model, device)
    if embeddings:
        queries = _embedding_queries(embeddings)
    else:
        from diffgap_search.generate import quiet_loading

        with quiet_loading():  # no load-time progress bars: stderr keeps to one line per error
            enc = _load_query_encoder(encoder, checkpoint, device)
        queries = text_queries(enc, texts) if texts else video_queries(enc, video)
    conditions = bridge(translator, queries, steps=steps, samples=samples, guidance=guidance, seed=seed, model=model)
    files = write_conditions(conditions, out, fmt_name)
    s = conditions.settings
    typer.echo(f"bridged {len(conditions)} conditions ({s['source_space'] or 'query side'} -> {s['target_space'] or 'audio'}, "
               f"dim {conditions.dim}, S={steps}, K={samples}, w={guidance}) -> {', '.join(map(str, files))}")


@app.command("generate")
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
    bridge_steps: int = typer.Option(5, "--bridge-steps", min=1, help="S: DDIM steps of the translation."),
    bridge_samples: int = typer.Option(1, "--bridge-samples", min=1, help="K: translations averaged per prompt."),
    bridge_guidance: float = typer.Option(1.0, "--bridge-guidance", help="Guidance scale of the translation."),
    device: Device = typer.Option(Device.auto, "--device"),
) -> None:
    """Generate audio with diffusers' AudioLDMPipeline, conditioned through the DiffGAP bridge.

    Writes one WAV (float32, the pipeline's sample rate) and one JSON sidecar (prompt, seed, settings,
    bridged or not) per prompt. Needs the generate extra: pip install "diffgap-search[generate]".

    Example: diffgap-search generate --model models/audiocaps --pipeline cvssp/audioldm-s-full-v2 "a dog barks" --out-dir gen/
    """
    from diffgap_search.generate import generate, load_pipeline

    if bridge and model is None:
        raise DiffgapError("--bridge needs --model DIR (a translator on the pipeline's CLAP spaces); or pass --no-bridge")
    if seconds is not None and not seconds > 0:
        raise DiffgapError(f"--seconds {seconds}: give a positive length in seconds")
    translator = _load_translator(model, device) if bridge else None
    pipe = load_pipeline(pipeline, torch_device(device))
    settings = {"pipeline": pipeline, "model": str(model) if bridge else None}
    files = generate(pipe, prompts, out_dir, translator, seconds=seconds, steps=steps, guidance=guidance, seed=seed,
                     bridge_steps=bridge_steps, bridge_samples=bridge_samples, bridge_guidance=bridge_guidance, settings=settings)
    for f in files:
        typer.echo(f"{f.wav}  {f.samples / f.sample_rate:.2f} s at {f.sample_rate} Hz, seed {f.seed}, "
                   f"{'bridged' if bridge else 'not bridged'}: {f.prompt}")


# ---------------------------------------------------------------------------
# benchmark
# ---------------------------------------------------------------------------


@app.command("benchmark")
@user_errors
def benchmark_command(
    pairs: Path = typer.Option(..., "--pairs", "-p", help="Test pairs: a parquet (its split 'test' rows when it has a split column) or a .npy (2, N, D) ([0] audio side, [1] query side)."),
    out: Path = typer.Option(..., "--out", "-o", help="Prefix of the results: PREFIX.md, PREFIX.json, PREFIX-r1.png (and PREFIX-steps.png)."),
    train: Optional[Path] = typer.Option(None, "--train", help="Training pairs (parquet or .npy; rows of split 'test' are left out): baselines are fitted and a translator trained on them."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="A trained translator folder to evaluate instead of training one."),
    methods: Optional[str] = typer.Option(None, "--methods", help="Comma-separated subset of raw,mean-shift,ridge,mlp,infonce,diffgap,rerank,fusion [every one the data allow]."),
    ablate: Optional[str] = typer.Option(None, "--ablate", help="Comma-separated: steps (S 50/20/5), interval (m 1000/5000/10000), components (CDM and BST on/off)."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="Training settings (JSON), e.g. training/audiocaps.json [30 epochs, interval 100, val 10%]."),
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
    import shlex

    from diffgap_search.benchmark import BenchmarkOptions, DEFAULT_TRAINING, report_tables, run_benchmark
    from diffgap_search.diffusion.train import load_recipe

    if train is None and model is None and kfold is None and methods is None:
        methods = "raw"
    options = BenchmarkOptions(
        methods=tuple(m.strip() for m in methods.split(",") if m.strip()) if methods else None,
        ablate=tuple(a.strip() for a in ablate.split(",") if a.strip()) if ablate else (),
        training=load_recipe(recipe) if recipe else dict(DEFAULT_TRAINING),
        kfold=kfold, seed=seed, steps=steps, device=torch_device(device),
    )
    command = " ".join(shlex.quote(a) for a in sys.argv[1:][sys.argv[1:].index("benchmark") + 1:]) \
        if "benchmark" in sys.argv[1:] else ""
    record = run_benchmark(pairs, out, train=train, model=model, options=options, command=command,
                           log=lambda line: typer.echo(line, err=True))
    typer.echo(report_tables(record))
    typer.echo(f"\nwrote {out}.md, {out}.json, {out}-r1.png" + (f", {out}-steps.png" if "steps" in record["ablations"] else "")
               + f" in {record['wall_s']:.0f} s")


def main() -> None:  # pragma: no cover - console entry point convenience
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
