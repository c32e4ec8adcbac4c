"""Search quality: the whole Searcher chain, four ways, on synthetic, real and cross-model pairs.

Every query side `b` (text or video) searches an exact flat index (`EmbeddingIndex`,
`index_type="flat"`) of its test gallery's audio-side clips `a` (one vector per clip);
a query's answer is its own clip. Methods (each row is one `Searcher.search(queries, k=10)`):

  raw cosine           `Searcher(index)`: no translator, the query itself searches the index
                       (only where query and audio side share a dim: synthetic, convirt, videoclip)
  translated           the translator (S = 5 DDIM steps, K = 1 sample, guidance w = 1), FAISS
                       top-N of the translated query (united with the raw top-N where the spaces
                       are one), ranked by the translated cosine alone (weights raw 0, translated 1,
                       diffusion 0; N = 100)
  translated + rerank  the same candidates, fused with the diffusion score of the reverse direction
                       (`FusionConfig()`, the `query` defaults without calibration: translated 1,
                       diffusion 0.5, raw 0, N = 100, S = 5, J = 8 timesteps)
  calibrated fusion    the settings `calibrate` chose (weights of raw / translated / diffusion, zero
                       included, N and S; the default `CalibrationGrid`) on a validation split of the
                       TRAINING data (the 10% of the training groups that `train` also held out to
                       pick its epoch; never the test fold)

on
  synthetic-10k          diffgap_search.synthetic, 512/512, its fixed split (train+val -> translator
                         and calibration, test -> 1,000 queries against 1,000 clips)
  convirt / videoclip    ../shared/data/embeddings, 5-fold (train and calibrate on 4 folds, retrieve
                         among the 5th); the table is the mean over folds, N the sum of queries
  xmodel                 ../shared/data/xmodel: train and calibrate on clotho_dev (384/256 dims:
                         no raw row), retrieve among clotho_eval's 1,045 clips with its 4,180 captions

R@k = share of queries whose clip is in the top k; mAP@10 = mean 1/(rank+1) over ranks < 10
(one relevant clip per query); ranks come from the Searcher's own top-10 (ties broken by its stable
sort). The folds, the translator's training settings and the min-steps rule are those of
benchmarks/translation_quality.py (its `folds()` is imported).

    python benchmarks/search_quality.py                            # everything (see the docstring's estimate below)
    python benchmarks/search_quality.py --datasets xmodel          # one dataset; results accumulate in search_quality.json
    python benchmarks/search_quality.py --quick --out /tmp/sq.md   # a few minutes: checks the script, not results

Full run (default settings, 2 idle CPU cores): roughly 20-30 minutes, most of it training
(about 3,000-5,000 steps per translator, 12 translators) and diffusion scoring.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine_block, markdown_table  # noqa: E402
from translation_quality import SEED, folds  # noqa: E402

from diffgap_search.calibrate import CalibrationGrid, calibrate  # noqa: E402
from diffgap_search.demo import top_k_ranks  # noqa: E402
from diffgap_search.diffusion.train import TrainConfig, direction_at, load_recipe, train  # noqa: E402
from diffgap_search.index import EmbeddingIndex  # noqa: E402
from diffgap_search.metrics import recall_at  # noqa: E402
from diffgap_search.pairs import Pairs, split_train_val  # noqa: E402
from diffgap_search.rerank import FusionConfig  # noqa: E402
from diffgap_search.search import Queries, Searcher  # noqa: E402
from diffgap_search.storage import write_shard  # noqa: E402

DATASETS = ("synthetic-10k", "convirt", "videoclip", "xmodel")
METHODS = ("raw cosine", "translated", "translated + rerank", "calibrated fusion")
K = 10
VAL_FRACTION = 0.1  # as translation_quality.py: the translator keeps its epoch on this split, calibration uses it too
METRICS = ("R@1", "R@5", "R@10", "mAP@10")
QUICK = {"synthetic_n": 3000, "max_steps": 300, "folds": 2, "queries": 300,
         "grid": CalibrationGrid(candidates=(10, 20, 50), steps=(2, 5))}


def gallery_index(test: Pairs, workdir: Path, name: str) -> tuple[EmbeddingIndex, np.ndarray]:
    """A flat index of the test gallery (one audio vector per clip, id = clip row) and each pair's clip row."""
    gallery, target = test.gallery()
    shard = workdir / f"{name}-gallery.parquet"
    write_shard(shard, np.arange(len(gallery)), gallery, space=test.space_a, modality="audio")
    return EmbeddingIndex.build([shard], workdir / f"{name}-index", index_type="flat", device="cpu"), target


def settings_of(searcher: Searcher) -> str:
    if searcher.translator is None:
        return "exact cosine, no translator"
    c = searcher.config
    return (f"raw {c.raw:g}, translated {c.translated:g}, diffusion {c.diffusion:g}; N={c.candidates}, S={c.steps}, "
            f"K={c.samples}, w={c.guidance:g}" + (f", J={c.timesteps}" if c.diffusion > 0 else ""))


def sample_rows(n: int, cap: int | None, seed: int) -> np.ndarray:
    if cap is None or n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, cap, replace=False))


def run_fold(fold: str, train_pairs: Pairs, test: Pairs, same_space: bool, config: TrainConfig, base: FusionConfig,
             grid: CalibrationGrid, workdir: Path, max_queries: int | None) -> tuple[list[dict], dict]:
    slug = fold.replace(" ", "_").replace("/", "of")
    notes: dict = {}

    # 1. the translator, on the training folds (train() holds out VAL_FRACTION of their groups to keep an epoch)
    t0 = time.perf_counter()
    translator = train(train_pairs, workdir / slug, replace(config, val_fraction=VAL_FRACTION), progress=False, log=lambda s: None)
    kept = translator.config.training["epoch"]
    steps = translator.config.training["steps"]
    # Algorithm 1 trains to-audio for the first `interval` steps, then flips: count the reverse direction's steps,
    # since the diffusion score is that direction's (an untrained one predicts 0: a constant score, no reranking)
    from_audio = sum(direction_at(s, config.interval, config.bidirectional) for s in range(steps))
    notes.update(train_s=round(time.perf_counter() - t0, 1), steps=steps, from_audio_steps=from_audio,
                 kept_epoch=kept["epoch"], parameters=translator.parameter_count)

    # 2. calibration on that same held-out split of the training folds (the split train() used: same seed)
    _, val = split_train_val(train_pairs, VAL_FRACTION, config.seed)
    val = val.subset(sample_rows(len(val), max_queries, SEED))
    val.source = f"{fold}: validation split of the training data"
    t0 = time.perf_counter()
    cal = calibrate(translator, val, base, grid)
    c = cal.config
    notes["calibration"] = {"queries": cal.queries, "gallery": cal.gallery, "s": round(time.perf_counter() - t0, 1),
                            "chosen": {"raw": c.raw, "translated": c.translated, "diffusion": c.diffusion,
                                       "N": c.candidates, "S": c.steps},
                            "val_R@1": {name: round(s["R@1"], 4) for name, s in cal.scores.items()},
                            "val_mAP@10": {name: round(s["mAP@10"], 4) for name, s in cal.scores.items()}}

    # 3. the test fold: an exact index of its clips, its queries through four Searchers
    index, target = gallery_index(test, workdir, slug)
    rows = sample_rows(len(test), max_queries, SEED)
    queries = Queries(test.b[rows], test.space_b, test.modality_b, ids=rows.astype(np.int64))
    translated_only = replace(base, raw=0.0, translated=1.0, diffusion=0.0)
    searchers = {}
    if same_space:
        searchers["raw cosine"] = Searcher(index)
    searchers["translated"] = Searcher(index, translator, config=translated_only)
    searchers["translated + rerank"] = Searcher(index, translator, config=base)
    searchers["calibrated fusion"] = Searcher(index, translator, config=c)
    out = []
    for name, searcher in searchers.items():
        t0 = time.perf_counter()
        ranking = searcher.search(queries, K)
        seconds = time.perf_counter() - t0
        m = recall_at(top_k_ranks(ranking.ids, target[rows], K))
        out.append({"method": name, **{key: m[key] for key in (*METRICS, "N")}, "settings": settings_of(searcher),
                    "s": round(seconds, 2)})
    notes.update(test_queries=len(rows), gallery=len(index))
    shutil.rmtree(workdir / slug, ignore_errors=True)
    return out, notes


def average(fold_rows: list[list[dict]]) -> list[dict]:
    """Mean of each metric over folds (every fold has the same methods in the same order); N summed."""
    out = []
    for rows in zip(*fold_rows):
        merged = {"method": rows[0]["method"], **{k: float(np.mean([r[k] for r in rows])) for k in METRICS},
                  "N": int(sum(r["N"] for r in rows))}
        settings = {r["settings"] for r in rows}
        merged["settings"] = settings.pop() if len(settings) == 1 else "chosen per fold (below)"
        out.append(merged)
    return out


def section(name: str, rec: dict) -> str:
    notes, per_fold = rec["folds"], rec["per_fold"]
    n0 = notes[0]
    several = len(notes) > 1
    lines = [f"### {name}", "",
             f"{n0['train_pairs']:,} training pairs, {n0['test_queries']:,} test queries against {n0['gallery']:,} clips"
             + (f" (per fold; mean of {len(notes)} folds)" if several else "")
             + f". Translator: {n0['parameters']:,} parameters, trained for {n0['epochs']} epochs (step cap "
             f"{n0['max_steps'] or 'none'}); kept epoch / steps (of them from-audio, the reranking direction) per fold: "
             + ", ".join(f"{f['kept_epoch']}/{f['steps']} ({f['from_audio_steps']})" for f in notes)
             + "; training " + ", ".join(f"{f['train_s']:.0f}" for f in notes) + " s.", "",
             f"`python benchmarks/search_quality.py {rec.get('command', '')}`; {rec.get('training', '')}.", ""]
    untrained = [f["fold"] for f in notes if f["from_audio_steps"] == 0]
    if untrained:
        lines += [f"**The from-audio direction, which gives the diffusion score, had no training step in "
                  f"{'any fold' if len(untrained) == len(notes) else ', '.join(untrained)}** (Algorithm 1 flips the "
                  "direction every `interval` steps and the kept checkpoint is earlier than the first flip): its "
                  "network outputs 0 for every candidate, the diffusion score is constant, its z-score is 0, and "
                  "\"translated + rerank\" can only equal \"translated\". Rerun with `--interval` below the "
                  "number of training steps to measure reranking.", ""]
    fmt = [{k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in r.items()} for r in rec["rows"]]
    lines.append(markdown_table(fmt, ["method", *METRICS, "N", "settings"]))
    lines += ["", "Calibration (on the validation split of the training data; val R@1 of each signal alone and fused, "
                  "at the chosen N and S; ties count against the query, so a constant signal scores 0):", ""]
    cal_rows = []
    for f in notes:
        c = f["calibration"]
        ch, v = c["chosen"], c["val_R@1"]
        cal_rows.append({"fold": f["fold"], "val queries": c["queries"], "val clips": c["gallery"],
                         "raw": f"{ch['raw']:g}", "translated": f"{ch['translated']:g}", "diffusion": f"{ch['diffusion']:g}",
                         "N": ch["N"], "S": ch["S"],
                         "val R@1 raw / transl. / diff. / fused": " / ".join(
                             f"{v[s]:.3f}" if s in v else "-" for s in ("raw", "translated", "diffusion", "fused"))})
    lines.append(markdown_table(cal_rows, list(cal_rows[0])))
    methods = [r["method"] for r in per_fold[0]]
    fold_table = []
    for f, rows in zip(notes, per_fold):
        r1 = {r["method"]: r["R@1"] for r in rows}
        baseline = max(r1.get("raw cosine", -1.0), r1["translated"])
        fold_table.append({"fold": f["fold"], **{m: f"{r1[m]:.3f}" for m in methods},
                           "calibrated - max(raw, translated)": f"{r1['calibrated fusion'] - baseline:+.3f}",
                           "rerank - translated": f"{r1['translated + rerank'] - r1['translated']:+.3f}"})
    lines += ["", "Test R@1 per fold (negative differences: the method lost on that fold):", "",
              markdown_table(fold_table, list(fold_table[0])),
              "", "<details><summary>machine</summary>", "", rec.get("machine", ""), "</details>", ""]
    return "\n".join(lines)


def settings_line(base: TrainConfig, min_steps: int, caps: dict, fusion: FusionConfig, grid: CalibrationGrid) -> str:
    base = replace(base, val_fraction=VAL_FRACTION)  # what train() is given
    return (f"training settings {json.dumps({k: v for k, v in base.to_dict().items() if k not in ('network', 'schedule')})}, "
            f"network {json.dumps(base.network.to_dict())}; datasets with few pairs train for at least {min_steps} steps; "
            f"step caps: {caps or 'none'}; base fusion settings {json.dumps(fusion.to_dict())}; calibration grid "
            f"N {list(grid.candidates)}, S {list(grid.steps)}, weights {list(grid.weights)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated, of {', '.join(DATASETS)} (and synthetic-100k)")
    ap.add_argument("--recipe", type=Path, default=None, help="training recipe (default: TrainConfig() defaults)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--interval", type=int, default=None,
                    help="steps between direction flips (default: the recipe's, else TrainConfig's 5000; the from-audio "
                         "direction that reranks only trains after the first flip)")
    ap.add_argument("--min-steps", type=int, default=3000, help="small datasets train at least this many steps")
    ap.add_argument("--max-steps", default="synthetic-100k=10000", help="per-dataset step caps, e.g. synthetic-100k=10000")
    ap.add_argument("--samples", type=int, default=1, help="K of every translated method (the query default: 1)")
    ap.add_argument("--guidance", type=float, default=1.0, help="w of every translated method (the query default: 1)")
    ap.add_argument("--max-queries", type=int, default=None, help="cap test and calibration queries (random, seeded)")
    ap.add_argument("--quick", action="store_true",
                    help=f"checks the script, not results: synthetic n={QUICK['synthetic_n']}, {QUICK['max_steps']} training "
                         f"steps, {QUICK['folds']} folds, <= {QUICK['queries']} queries, a small calibration grid")
    ap.add_argument("--out", type=Path, default=RESULTS / "search_quality.md")
    args = ap.parse_args()

    base_train = TrainConfig.from_dict(load_recipe(args.recipe)) if args.recipe else TrainConfig()
    base_train = replace(base_train, epochs=args.epochs, interval=args.interval or base_train.interval)
    caps = dict((k, int(v)) for k, v in (item.split("=") for item in args.max_steps.split(",") if item))
    fusion = FusionConfig(samples=args.samples, guidance=args.guidance, seed=SEED)
    grid = QUICK["grid"] if args.quick else CalibrationGrid()
    max_queries = min(args.max_queries or QUICK["queries"], QUICK["queries"]) if args.quick else args.max_queries
    command = " ".join(shlex.quote(a) for a in sys.argv[1:])

    store = args.out.with_suffix(".json")
    record = json.loads(store.read_text()) if store.exists() else {}  # datasets may be run in several invocations
    workdir = Path(tempfile.mkdtemp(prefix="search_quality-"))
    try:
        for name in filter(None, args.datasets.split(",")):
            size = QUICK["synthetic_n"] if args.quick and name.startswith("synthetic") else None
            chosen = itertools.islice(folds(name, size), QUICK["folds"] if args.quick else None)
            fold_rows, fold_notes = [], []
            for fold, train_pairs, test, same in chosen:
                steps_per_epoch = -(-int(len(train_pairs) * (1 - VAL_FRACTION)) // base_train.batch_size)
                epochs = max(base_train.epochs, -(-args.min_steps // steps_per_epoch))
                cap = QUICK["max_steps"] if args.quick else caps.get(name)
                config = replace(base_train, epochs=epochs, max_steps=cap)
                print(f"{fold}: {len(train_pairs):,} training pairs, {epochs} epochs (cap {cap}) ...", flush=True)
                rows, notes = run_fold(fold, train_pairs, test, same, config, fusion, grid, workdir, max_queries)
                notes.update(fold=fold, train_pairs=len(train_pairs), epochs=epochs, max_steps=cap)
                print(f"  {json.dumps(notes)}", flush=True)
                for r in rows:
                    print(f"  {r['method']:<20} R@1 {r['R@1']:.3f}  R@5 {r['R@5']:.3f}  R@10 {r['R@10']:.3f}  "
                          f"mAP@10 {r['mAP@10']:.3f}  N {r['N']}  ({r['s']} s; {r['settings']})", flush=True)
                fold_rows.append(rows)
                fold_notes.append(notes)
            record[name] = {"rows": fold_rows[0] if len(fold_rows) == 1 else average(fold_rows), "folds": fold_notes,
                            "per_fold": fold_rows, "command": command, "quick": args.quick,
                            "machine": machine_block({"datasets": name}),
                            "training": settings_line(base_train, args.min_steps, caps, fusion, grid)}
            store.parent.mkdir(parents=True, exist_ok=True)
            store.write_text(json.dumps(record, indent=1, default=str))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    names = [n for n in (*DATASETS, "synthetic-100k") if n in record]
    quick = [n for n in names if record[n].get("quick")]
    text = f"""# Search quality: raw / translated / translated + rerank / calibrated fusion

`python benchmarks/search_quality.py --datasets ...` (datasets may be run in several invocations;
this file holds every dataset stored in `search_quality.json`, each with its own command, settings
and machine block).{f" QUICK RUNS (not results): {', '.join(quick)}." if quick else ""}

Each query side `b` (text or video) searches an exact flat index of its test gallery's clips (audio side
`a`, one vector per clip) through `Searcher.search(queries, k={K})`; a query's answer is its own clip.

- **raw cosine**: no translator; the query itself searches the index (only where both sides have one dim).
- **translated**: S DDIM steps, K samples, guidance w (below), FAISS top-N of the translated query united
  with the raw top-N where the spaces are one, ranked by the translated cosine alone.
- **translated + rerank**: the same candidates; translated cosine and the diffusion score of the reverse
  direction (J = {fusion.timesteps} shared (timestep, noise) draws, t in [{fusion.t_min}, {fusion.t_max}]),
  z-scored per query and summed with weights 1 and {fusion.diffusion:g} (`FusionConfig()`, the `query` defaults).
- **calibrated fusion**: the weights (raw / translated / diffusion, zero included), N and S that
  `calibrate` chose on a validation split of the TRAINING data (the {VAL_FRACTION:.0%} of the training
  groups the translator also held out to keep its best epoch); the test fold never takes part.

R@k = share of queries whose clip ranks < k; mAP@10 = mean 1/(rank+1) over ranks < 10; N = queries
(summed over folds; metrics are the mean of the folds). Seed {SEED}. Where a method is below another
the table says so: the per-fold table gives each fold's R@1 and the difference of calibrated fusion to
the better of raw cosine and translation alone.

{chr(10).join(section(n, record[n]) for n in names)}
"""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
