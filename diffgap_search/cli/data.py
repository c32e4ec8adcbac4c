"""embed, pair, prepare, synthetic, demo: making embeddings and pairs files."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from diffgap_search.cli.common import Device, user_errors


class Modality(str, Enum):
    audio = "audio"
    text = "text"
    video = "video"


class Dataset(str, Enum):
    audiocaps = "audiocaps"
    clotho = "clotho"
    vggsound = "vggsound"


class Split(str, Enum):
    train = "train"
    val = "val"
    test = "test"


def echo_failures(failures: list[tuple[str, str]], prefix: str, listed_in: Path, shown: int) -> None:
    """The first `shown` failures on stderr, then where all of them are listed."""
    for name, reason in failures[:shown]:
        typer.echo(f"  {prefix}{name}: {reason}", err=True)
    more = len(failures) - shown
    typer.echo(f"  {'and ' + str(more) + ' more; ' if more > 0 else ''}all in {listed_in}", err=True)


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
    from diffgap_search.devices import torch_device
    from diffgap_search.encoders import load_encoder
    from diffgap_search.ingest import embed_captions, embed_media

    enc = load_encoder(encoder, device=torch_device(device), batch_size=batch_size, checkpoint=checkpoint,
                       num_frames=frames if modality == Modality.video else None)
    if modality == Modality.text:
        report = embed_captions(enc, inputs, out, batch=batch_size)
    else:
        report = embed_media(enc, inputs, out, per_window=per_window, modality=modality.value)
    rate = report.embedded / report.seconds if report.seconds else 0.0
    typer.echo(f"{out}: {report.rows} rows in space {enc.space!r} (dim {enc.dim}); embedded {report.embedded} "
               f"({rate:.1f}/s), skipped {report.skipped} already embedded, {len(report.failed)} failed")
    if report.failed:
        echo_failures(report.failed, "failed: ", report.errors_csv, shown=5)


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
    from diffgap_search.datasets import prepare_dataset

    report = prepare_dataset(dataset.value, manifest, out, audio_dir=audio_dir, audio_encoder=audio_encoder,
                             text_encoder=text_encoder, video_dir=video_dir, video_encoder=video_encoder,
                             audio_embeddings=audio_embeddings, query_embeddings=query_embeddings, checkpoint=checkpoint,
                             split=split.value if split else None, frames=frames, batch_size=batch_size, device=device.value)
    typer.echo(f"{out}: {report.pairs} pairs of {report.paired_clips} clips ({dataset.value} {manifest.name}: "
               f"{report.clips} clips" + (f", split {split.value}" if split else "") + f", {report.query_modality} queries); "
               f"{report.missing_clips} clips left out"
               + (" (" + ", ".join(f"{n} without {side}" for side, n in report.left_out.items()) + ")" if report.left_out else "")
               + (f"; {report.duplicates} repeated manifest rows skipped" if report.duplicates else ""))
    if report.missing:
        echo_failures([(f"{side}: {clip_id}", reason) for clip_id, side, reason in report.missing], "missing ",
                      report.missing_csv, shown=3)
    if report.caches:
        typer.echo(f"media embeddings kept in {', '.join(map(str, report.caches))} (a re-run embeds only new files)", err=True)


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
