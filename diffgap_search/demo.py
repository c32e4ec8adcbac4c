"""`diffgap-search demo`: the whole engine on a synthetic corpus, offline, in about a minute on a laptop CPU.

The data flow, one stage per step of `run_demo` (every file lands in the output folder):

    1. write_synthetic      -> corpus.parquet (audio side: the index's clips), pairs.parquet (a, b, split)
                               queries.parquet (the test split's text side, each with its target clip)
    2. train                -> model/ (a small DiffGAP translator: train split; epoch kept on the val split)
    3. Index.build -> index/ (flat: exact inner product over every clip of the corpus)
    4. calibrate            -> model/config.json "fusion" (weights, N, S chosen on the val split)
    5. Engine.search_queries     -> the test queries four ways: raw cosine, translated, translated + rerank,
                               calibrated fusion; ranks of each query's own clip -> R@1/5/10, mAP@10

The data are synthetic (`diffgap_search.synthetic`: two unit-norm spaces with a modality
gap like CLAP's), so the numbers show the mechanics of the engine, not its quality on real
sounds. The report ends with the same pipeline as commands for real data.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from diffgap_search.atomic import replace_dir, scratch_dir
from diffgap_search.calibrate import CalibrationGrid, calibrate, write_calibration
from diffgap_search.engine import Engine
from diffgap_search.diffusion.train import TrainConfig, train
from diffgap_search.diffusion.translator import Translator
from diffgap_search.errors import DiffgapError
from diffgap_search.index import Index
from diffgap_search.metrics import recall_at
from diffgap_search.pairs import read_pairs
from diffgap_search.queries import Queries
from diffgap_search.signals import FusionConfig
from diffgap_search.types import Direction
from diffgap_search.storage import write_json_atomic, write_shard
from diffgap_search.synthetic import GapConfig, split_of, write_synthetic

MARK = "results.json"  # written last; its "written_by" lets a re-run replace the folder
WRITTEN_BY = "diffgap-search demo"
DEFAULT_N = 10_000
QUICK_N = 3_000
K = 10  # R@10 and mAP@10 need the top 10
EXAMPLES = 3

# The translator of the demo: a small network (seconds per epoch on one core), a larger
# batch and learning rate than the paper's, direction flips every 25 steps (both directions train
# from the first epoch on; the reverse one scores candidates). Written to
# <out>/recipe.json so that `diffgap-search train --recipe` can repeat it.
DEMO_RECIPE = {
    "description": "diffgap-search demo: a small translator for synthetic 512/512 pairs, seconds on a laptop CPU.",
    "epochs": 10,
    "batch_size": 128,
    "lr": 0.001,
    "interval": 25,
    "checkpoint_every": 100_000,
    "val_queries": 500,
    "network": {"hidden": 64, "emb": 64, "blocks": 2, "mlp_ratio": 2.0},
}
# Candidates N of the demo's reranked searches, and its calibration grid: smaller than
# `query`'s and `calibrate`'s defaults (N up to 50, not 100; S in {2, 5}), since every
# candidate costs J = 8 forward passes of the network to score. Same weights.
RERANK_CANDIDATES = 50
DEMO_GRID = CalibrationGrid(candidates=(10, 20, RERANK_CANDIDATES), steps=(2, 5), weights=(0.0, 0.25, 0.5, 1.0))

BANNER = """\
=====================================================================================
 diffgap-search demo -- SYNTHETIC DATA
 Every embedding here is generated (diffgap_search.synthetic): two unit-norm spaces,
 'audio' and 'text', with a modality gap like CLAP's. The numbers show how the engine
 works (raw search vs. translation vs. reranking), NOT how well it finds real sounds.
====================================================================================="""

REAL_DATA = """\
On real data (CLAP embeddings of your clips, and a pairs file to train on:
columns a = audio, b = caption (or video) embeddings, split = train/val/test):
  diffgap-search embed clips/ --encoder hf:laion/clap-htsat-unfused --out clips.parquet
  diffgap-search build-index --embeddings clips.parquet --out indexes/clips
  diffgap-search train --pairs pairs.parquet --out models/clap
  diffgap-search calibrate --model models/clap --pairs pairs.parquet --split val
  diffgap-search query indexes/clips "a dog barks" "rain on a tin roof" --model models/clap --encoder hf:laion/clap-htsat-unfused
(video -> audio pairs: `diffgap-search embed videos/ --modality video ...` then `diffgap-search pair`.)"""


def run_demo(out: str | Path = "demo", *, n: int = DEFAULT_N, seed: int = 0, progress: bool = True,
             log: Callable[[str], None] = print) -> dict:
    """Build, calibrate and evaluate the engine on `n` synthetic pairs under `out`; print the report.

    Everything is written into a scratch folder beside `out` and swapped into place at
    the end, so `out` holds a complete previous run or a complete new one, never a mix.
    A folder that a demo did not write is refused. Returns the contents of results.json.
    """
    out = Path(out)
    if n < 1_000:
        raise DiffgapError(f"n={n} pairs is too few for the demo (100 test queries need 1,000 pairs); use n >= 1000")
    _check_replaceable(out)
    log(BANNER)
    tmp = scratch_dir(out)
    try:
        with _one_thread():
            results = _run(tmp, out, n, seed, progress, log)
        write_json_atomic(results, tmp / MARK)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(report(results))
    return results


def _run(tmp: Path, out: Path, n: int, seed: int, progress: bool, log) -> dict:
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> float:
        nonlocal clock
        now = time.perf_counter()
        seconds[name], clock = round(now - clock, 2), now
        return seconds[name]

    # 1. the synthetic corpus: audio side -> corpus.parquet, pairs (with splits) -> pairs.parquet
    log(f"[1/5] synthetic corpus: {n:,} (audio, text) pairs of 512 dims, seed {seed}")
    files = write_synthetic(tmp, n, GapConfig(), seed=seed, progress=progress)
    pairs_file = files["pairs"]
    test = read_pairs(pairs_file, split="test")
    # the test split's text side is the query set; each query's answer is its own clip (corpus id = pair id)
    queries = Queries(test.b, test.space_b, test.modality_b, [f"synthetic query for clip {i}" for i in test.pair_id],
                      ids=test.pair_id)
    write_shard(tmp / "queries.parquet", queries.ids, queries.vectors,
                pa.table({"target_id": pa.array(test.pair_id), "caption": pa.array(queries.labels, pa.string())}),
                space=queries.space, modality=queries.modality)
    write_shard(tmp / "examples.parquet", queries.ids[:EXAMPLES], queries.vectors[:EXAMPLES],
                pa.table({"caption": pa.array(queries.labels[:EXAMPLES], pa.string())}),
                space=queries.space, modality=queries.modality)
    stats = files["stats"]
    log(f"      modality gap: raw-cosine R@1 {stats['raw_r1']:.3f} ({stats['n_way']}-way), distance between the "
        f"modality means {stats['mean_distance']:.3f}  ({lap('synthetic'):.1f} s)")

    # 2. the translator, trained on the train split (the val split picks the epoch)
    recipe = dict(DEMO_RECIPE, seed=seed)
    write_json_atomic(recipe, tmp / "recipe.json")
    log("[2/5] training a small DiffGAP translator on the train split")
    translator = train(pairs_file, tmp / "model", TrainConfig.from_dict(recipe, "demo recipe"), device="cpu",
                       progress=progress, log=lambda line: log("      " + line))
    kept = translator.config.training["epoch"]
    log(f"      {translator.parameter_count:,} parameters; kept step {kept['step']}: validation translated R@1 "
        f"{kept['val_R@1']:.3f} ({kept['val_N']} queries, {kept['val_gallery']}-way)  ({lap('train'):.1f} s)")

    # 3. the index: every clip of the corpus, exact search
    log("[3/5] flat index of the audio side")
    index = Index.build([files["corpus"]], tmp / "index", index_type="flat", device="cpu")
    log(f"      {len(index):,} clips, dim {index.dim}, space {index.space!r}  ({lap('index'):.1f} s)")

    # 4. calibration on the val split: fusion weights, N and S, stored in the translator's config.json
    log("[4/5] calibrating fusion weights, N and S on the val split")
    val = read_pairs(pairs_file, split="val")
    val.source = f"{out / pairs_file.name} (split val)"
    calibration = calibrate(translator, val, FusionConfig(seed=seed), DEMO_GRID, log=lambda line: log("      " + line))
    write_calibration(tmp / "model", calibration)
    c = calibration.config
    log(f"      chosen: weights {_weights(c)}; N={c.candidates}, S={c.steps} ({calibration.queries} queries, "
        f"{calibration.gallery}-way)  ({lap('calibrate'):.1f} s)")

    # 5. the test queries through the Engine, four ways; the calibrated one loads its settings from model/
    log(f"[5/5] searching: {len(queries):,} test queries against the index, four ways")
    translator = Translator.load(tmp / "model", "cpu")
    uncalibrated = FusionConfig(candidates=RERANK_CANDIDATES, seed=seed)
    engines = {
        "raw cosine": Engine(index),  # no translator: plain cosine search of the text vectors
        "translated": Engine(index, translator, configs=_both(uncalibrated.with_weights(translated=1.0))),
        "translated + rerank": Engine(index, translator, configs=_both(uncalibrated.with_weights(translated=1.0, diffusion=0.5))),
        "calibrated fusion": Engine(index, translator),  # settings from model/calibration.json
    }
    targets = test.pair_id  # each query's answer is the clip it was paired with: corpus id = pair id
    assert np.array_equal(index.ids, np.arange(n)), "write_synthetic numbers the corpus by pair id"
    methods, rankings = {}, {}
    bar = tqdm(engines.items(), desc="search", unit="method", disable=not progress)
    for name, engine in bar:
        bar.set_postfix_str(name)
        start = time.perf_counter()
        rankings[name] = engine.search_queries(queries, K)
        elapsed = time.perf_counter() - start
        ranks = top_k_ranks(rankings[name].ids, targets)  # [Q]; K = not in the top K
        m = recall_at(ranks)
        methods[name] = {**{key: m[key] for key in ("R@1", "R@5", "R@10", "mAP@10", "N")},
                         "settings": _settings(engine), "ms_per_query": round(1000 * elapsed / len(queries), 3)}
    lap("search")

    examples = []
    for q in range(EXAMPLES):
        examples.append({
            "query": int(queries.ids[q]), "label": queries.labels[q], "target": _path(index, int(targets[q])),
            "hits": {name: [{"id": int(i), "path": row["path"], "score": round(float(s), 4)}
                            for i, s, row in zip(r.ids[q][:3], r.scores[q][:3], r.rows(q)[:3])]
                     for name, r in rankings.items() if name in ("raw cosine", "calibrated fusion")},
            "rank": {name: int(top_k_ranks(r.ids[q : q + 1], targets[q : q + 1])[0]) for name, r in rankings.items()},
        })
    splits = np.unique(split_of(np.arange(n)), return_counts=True)
    return {
        "written_by": WRITTEN_BY,
        "synthetic": True,
        "n": n,
        "seed": seed,
        "out": str(out),
        "splits": {str(s): int(c) for s, c in zip(*splits)},
        "gap": stats,
        "translator": {"parameters": translator.parameter_count, "kept_epoch": kept},
        "calibration": calibration.to_section(),
        "test": {"queries": len(queries), "gallery": len(index), "k": K, "methods": methods},
        "examples": examples,
        "seconds": {**seconds, "total": round(sum(seconds.values()), 2)},
    }


def top_k_ranks(ids: np.ndarray, targets: np.ndarray, k: int = K) -> np.ndarray:
    """Rank of each query's target id in its top-k ids [Q, k] (0 = first); k when it is not there.

    Within the top k this is the rank `metrics.target_ranks` gives (for distinct scores),
    so R@1/5/10 and mAP@10 of `recall_at` are exact; beyond k every miss counts as k.
    """
    ids = np.asarray(ids)[:, :k]
    hit = ids == np.asarray(targets)[:, None]
    return np.where(hit.any(axis=1), hit.argmax(axis=1), k)


def _both(config: FusionConfig) -> dict:
    return {d: config for d in Direction}


def _weights(c: FusionConfig) -> str:
    return ", ".join(f"{name} {w:g}" for name, w in c.weights.items())


def _settings(engine: Engine) -> str:
    if engine.translator is None:
        return "exact cosine, no translator"
    c = engine.config(Direction.TO_AUDIO)
    return f"{_weights(c)}; N={c.candidates}, S={c.steps}"


def _path(index: Index, clip_id: int) -> str:
    return index.metadata(index.positions_of(np.array([clip_id])))[0]["path"]


@contextlib.contextmanager
def _one_thread():
    """One intra-op torch thread for the demo's small networks (width 64).

    Measured on 2 cores shared with another job: 60 training steps of batch 128 took 12 s
    with two threads and 1.6 s with one (the threads' synchronization dominates such small
    matrices); diffusion scoring ran at 52k candidate-timesteps/s with two, 66k with one.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _check_replaceable(out: Path) -> None:
    """`out` may be absent, empty, or a previous demo's folder; anything else is refused untouched."""
    if not out.exists():
        return
    if not out.is_dir():
        raise DiffgapError(f"{out} is a file; give --out a folder name for the demo's outputs")
    if not any(out.iterdir()):
        return
    try:
        written_by = json.loads((out / MARK).read_text()).get("written_by")
    except (OSError, ValueError, AttributeError):
        written_by = None
    if written_by != WRITTEN_BY:
        raise DiffgapError(f"{out} exists and was not written by `{WRITTEN_BY}` (no {MARK} of a demo in it); "
                           "choose another --out, or remove the folder")


# ---------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------


def report(results: dict) -> str:
    """The table, a few example queries and the commands for real data, as printed text."""
    out, test = results["out"], results["test"]
    lines = ["", f"Test split: {test['queries']:,} text-side queries against the index of {test['gallery']:,} clips "
                 f"(each query's answer: its own paired clip; synthetic data)"]
    header = f"  {'method':<21}{'R@1':>7}{'R@5':>7}{'R@10':>7}{'mAP@10':>8}  settings"
    lines += [header, "  " + "-" * (len(header) + 22)]
    for name, m in test["methods"].items():
        lines.append(f"  {name:<21}{m['R@1']:>7.3f}{m['R@5']:>7.3f}{m['R@10']:>7.3f}{m['mAP@10']:>8.3f}  {m['settings']}")
    validation = results["calibration"]["validation"]
    scores = validation["scores"]
    lines.append(f"  (calibration, val split, {validation['queries']:,} queries {validation['gallery']:,}-way: R@1 raw "
                 f"{scores['raw']['R@1']:.3f}, translated {scores['translated']['R@1']:.3f}, fused {scores['fused']['R@1']:.3f})")
    lines += ["", "Example queries (top 3 with their scores: cosine for raw, fused z-score for calibrated; "
                  "* = the query's own clip):"]
    for ex in results["examples"]:
        lines.append(f"  query {ex['query']} \"{ex['label']}\" -> answer {ex['target']}")
        for name, hits in ex["hits"].items():
            shown = "  ".join(f"{'*' if h['path'] == ex['target'] else ' '}{Path(h['path']).stem} ({h['score']:.2f})"
                              for h in hits)
            rank = ex["rank"][name]
            where = f"rank {rank + 1}" if rank < test["k"] else f"not in top {test['k']}"
            lines.append(f"    {name:<18} {shown}   answer: {where}")
    lines += ["", f"Outputs in {out}/: corpus.parquet, pairs.parquet, queries.parquet, examples.parquet, recipe.json, "
                  "model/, index/, results.json",
              "Query the demo's index yourself:",
              f"  diffgap-search query {out}/index --embeddings-file {out}/examples.parquet --model {out}/model --k 3",
              "", REAL_DATA, "",
              f"Done in {results['seconds']['total']:.0f} s (synthetic {results['seconds']['synthetic']:.0f}, "
              f"train {results['seconds']['train']:.0f}, index {results['seconds']['index']:.0f}, calibrate "
              f"{results['seconds']['calibrate']:.0f}, search {results['seconds']['search']:.0f})."]
    return "\n".join(lines)
