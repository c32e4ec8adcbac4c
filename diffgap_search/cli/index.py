"""build-index, add, info: index folders."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from diffgap_search.cli.common import Device, print_json, user_errors
from diffgap_search.errors import DiffgapError


class IndexType(str, Enum):
    auto = "auto"
    flat = "flat"
    hnsw = "hnsw"
    ivfpq = "ivfpq"


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
    wait: float = typer.Option(300.0, "--wait", min=0, help="Seconds to wait while another process writes the same index folder."),
) -> None:
    """Build a FAISS index folder from embedding shards, or from audio files with --encoder.

    Example: diffgap-search build-index --embeddings corpus/*.parquet --out indexes/clips

    Example: diffgap-search build-index clips/ --encoder hf:laion/clap-htsat-unfused --out indexes/clips
    (embeddings are cached in indexes/clips.embeddings.parquet: a re-run embeds only new files)

    Example: diffgap-search build-index clips/ --encoder laion-clap:HTSAT-tiny --checkpoint 630k-audioset-best.pt --out indexes/clips
    """
    from diffgap_search.index import Index
    from diffgap_search.ingest import index_media

    if media and not encoder:
        raise DiffgapError("media inputs need --encoder (e.g. --encoder hf:laion/clap-htsat-unfused); or pass --embeddings")
    if encoder and not media:
        raise DiffgapError("--encoder needs audio files or folders to embed (build-index clips/ --encoder ...)")
    if checkpoint and not encoder:
        raise DiffgapError("--checkpoint goes with --encoder laion-clap:... (build-index clips/ --encoder laion-clap:HTSAT-tiny --checkpoint FILE)")
    if bool(media) == bool(embeddings):
        raise DiffgapError("give either --embeddings shards or media files with --encoder, not both and not neither")
    options = dict(index_type=index_type.value, space=space, memory_budget=memory_budget, recall_target=recall_target, metadata=metadata,
                   wait_s=wait)
    if media:
        index, report = index_media(media, out, encoder=encoder, checkpoint=checkpoint, device=device.value, **options)
        typer.echo(f"embedded {report.embedded} files ({report.skipped} cached, {len(report.failed)} failed"
                   + (f": see {report.errors_csv}" if report.failed else "") + ")", err=True)
    else:
        index = Index.build(embeddings, out, device=device.value, **options)
    m = index.manifest
    typer.echo(
        f"built {out}: {m['count']} vectors, dim {m['dim']}, {m['index_type']} ({m['factory']}), "
        f"recall@10 {m['tuned_recall_at_10']:.3f} with {m['search_params'] or 'exact search'}"
    )


@user_errors
def add(
    index_dir: Path = typer.Argument(..., help="Existing index folder."),
    embeddings: List[Path] = typer.Option(..., "--embeddings", "-e", help="Parquet shards or one .npy to append."),
    metadata: Optional[Path] = typer.Option(None, "--metadata", help="Rows for a .npy input, same order."),
    wait: float = typer.Option(300.0, "--wait", min=0, help="Seconds to wait while another process writes the same index folder."),
) -> None:
    """Append embeddings to an index without rebuilding it; new ids continue after the largest.

    Concurrent writers of one index are applied one after the other (a writer lock beside the folder).

    Example: diffgap-search add indexes/clips --embeddings new_clips.parquet
    """
    from diffgap_search.index import Index

    after = Index.open(index_dir, device="cpu").add(embeddings, metadata=metadata, wait_s=wait)
    typer.echo(f"added {after.added} vectors to {index_dir}: {len(after)} in all")


@user_errors
def info(
    index_dir: Path = typer.Argument(..., help="Index folder."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Show what an index holds: count, dim, space, type, bytes on disk, dates.

    Example: diffgap-search info indexes/clips
    """
    from diffgap_search.index import Index

    facts = Index.load(index_dir, device="cpu").info()
    if as_json:
        print_json(facts)
        return
    width = max(map(len, facts))
    for key, value in facts.items():
        typer.echo(f"{key:<{width}}  {value}")
