"""Learning check: does the DiffGAP translator bring queries to their audio?

Text->audio (query side b -> audio side a) retrieval R@1/5/10 and mAP@10 of
  raw        the query itself (only where both sides share a space and dim)
  mean-shift b - mean(b) + mean(a) (same dim only)
  ridge      closed-form ridge b -> a, lambda chosen on the validation split
  diffgap    the translator, S = 50 / 20 / 5 DDIM steps; samples K and guidance w
             chosen on the validation split (never on the test set)
on
  synthetic-10k / -100k  diffgap_search.synthetic, 512/512, its fixed train/val/test split
  convirt / videoclip    the real pairs in ../shared/data/embeddings, 5-fold (train on 4
                         folds, retrieve among the 5th; validation = 10% of the train folds)
  xmodel                 ../shared/data/xmodel: train on clotho_dev, retrieve among
                         clotho_eval's 1,045 clips with its 4,180 captions

    python benchmarks/studies/translation_quality.py                    # everything (~1 h on 2 cores)
    python benchmarks/studies/translation_quality.py --datasets xmodel  # one dataset
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py
from common import RESULTS, machine_block, markdown_table  # noqa: E402

from diffgap_search.baselines import MeanShift, fit_ridge  # noqa: E402
from diffgap_search.benchmark import pairs_from_arrays  # noqa: E402
from diffgap_search.diffusion.train import TrainConfig, load_recipe, train  # noqa: E402
from diffgap_search.metrics import recall_at, target_ranks  # noqa: E402
from diffgap_search.pairs import Pairs, read_pairs, split_train_val  # noqa: E402
from diffgap_search.storage import write_file_atomic  # noqa: E402
from diffgap_search.synthetic import GapConfig, make_pairs, split_of  # noqa: E402

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
STEPS = (50, 20, 5)
SAMPLES = (1, 4)  # K = 16 helps a little more (see translator_study.md) but costs 4x the CPU time at S = 50
GUIDANCE = (1.0, 2.0, 4.0, 6.0, 8.0)
SEED = 0


def folds(name: str, size: int | None = None):
    """Yield (fold name, train Pairs, test Pairs, same_space)."""
    if name.startswith("synthetic"):
        n = size or (10_000 if name.endswith("10k") else 100_000)
        p = make_pairs(n, GapConfig(), seed=SEED)
        split = split_of(p.pair_id)
        both = pairs_from_arrays(p.a, p.b, split=split, source=name)
        train_rows = np.flatnonzero(split != "test")
        yield name, both.subset(train_rows), both.subset(np.flatnonzero(split == "test")), True
    elif name in ("convirt", "videoclip"):
        x = np.load(SHARED / "embeddings" / f"{name}.npy")  # [2, N, D]: [0] image/video side, [1] text
        n = x.shape[1]
        order = np.random.default_rng(SEED).permutation(n)
        for k in range(5):
            test = np.sort(order[k::5])
            train_rows = np.setdiff1d(np.arange(n), test)
            both = pairs_from_arrays(x[0], x[1], source=name)
            yield f"{name} fold {k + 1}/5", both.subset(train_rows), both.subset(test), True
    elif name == "xmodel":
        yield ("xmodel", read_pairs(SHARED / "xmodel" / "clotho_dev.parquet"),
               read_pairs(SHARED / "xmodel" / "clotho_eval.parquet"), False)
    else:
        raise SystemExit(f"unknown dataset {name}")


def evaluate(x: np.ndarray, test: Pairs) -> dict:
    gallery, target = test.gallery()
    return recall_at(target_ranks(x, gallery, target))


def r1(x: np.ndarray, pairs: Pairs) -> float:
    gallery, target = pairs.gallery()
    ranks = target_ranks(x, gallery, target)
    return float((ranks < 1).mean()) + 1e-6 * float((ranks < 10).mean())  # R@1, ties broken by R@10


def run_fold(fold: str, train_pairs: Pairs, test: Pairs, same_space: bool, config: TrainConfig, workdir: Path,
             val_queries: int) -> tuple[list[dict], dict]:
    rows, notes = [], {}
    fit, val = split_train_val(train_pairs, 0.1, SEED)
    vg, vt = val.gallery()
    if same_space and fit.dim_a == fit.dim_b:
        rows.append({"method": "raw", **evaluate(test.b, test)})
        rows.append({"method": "mean-shift", **evaluate(MeanShift().fit(fit.a, fit.b)(test.b), test)})
    ridge, lam = fit_ridge(fit.a, fit.b, vg, val.b, vt)
    rows.append({"method": f"ridge (lambda {lam:g})", **evaluate(ridge(test.b), test)})

    t0 = time.perf_counter()
    out = workdir / fold.replace(" ", "_").replace("/", "of")
    translator = train(train_pairs, out, replace(config, val_fraction=0.1), progress=False, log=lambda s: None)
    notes["train_s"] = round(time.perf_counter() - t0, 1)
    notes["steps"] = translator.config.training["steps"]
    notes["parameters"] = translator.parameter_count

    # K and w on the validation split (at S = 5, the cheapest), never on the test set
    vq = val.subset(np.arange(min(len(val), val_queries)))
    gen = lambda: torch.Generator().manual_seed(SEED)  # noqa: E731
    grid = {}
    for k in SAMPLES:
        for w in GUIDANCE:
            grid[(k, w)] = r1(translator.translate(vq.b, steps=5, samples=k, guidance=w, generator=gen()), vq)
    k_best, w_best = max(grid, key=grid.get)
    notes["val_grid_R@1_S5"] = {f"K={k} w={w:g}": round(v, 4) for (k, w), v in grid.items()}
    notes["chosen"] = {"samples": k_best, "guidance": w_best}
    for steps in STEPS:
        for i, (k, w) in enumerate(((1, 1.0), (k_best, w_best))):  # always both rows: folds line up
            t = time.perf_counter()
            x = translator.translate(test.b, steps=steps, samples=k, guidance=w, generator=gen())
            rows.append({"method": f"diffgap S={steps} K={k} w={w:g}" + (" (val-chosen)" if i == 1 else ""),
                         **evaluate(x, test), "s": round(time.perf_counter() - t, 1)})
    shutil.rmtree(out, ignore_errors=True)
    return rows, notes


def average(fold_rows: list[list[dict]]) -> list[dict]:
    """Mean of each metric over folds (the rows of each fold come in the same order)."""
    out = []
    for rows in zip(*fold_rows):
        merged = {"method": rows[0]["method"].split(" (lambda")[0] + (" (lambda per fold)" if "lambda" in rows[0]["method"] else "")}
        if "diffgap" in rows[0]["method"] and "val-chosen" in rows[0]["method"]:
            merged["method"] = rows[0]["method"].split(" K=")[0] + " (K, w val-chosen per fold)"
        for key in ("R@1", "R@5", "R@10", "mAP@10", "median rank"):
            merged[key] = float(np.mean([r[key] for r in rows]))
        merged["N"] = int(sum(r["N"] for r in rows))
        out.append(merged)
    return out


DATASETS = ("xmodel", "synthetic-10k", "synthetic-100k", "convirt", "videoclip")


def settings_line(base: TrainConfig, min_steps: int, caps: dict) -> str:
    return (f"training settings {json.dumps({k: v for k, v in base.to_dict().items() if k not in ('network', 'schedule')})}, "
            f"network {json.dumps(base.network.to_dict())}, schedule {json.dumps(base.schedule.to_dict())}; "
            f"datasets with few pairs train for at least {min_steps} steps; step caps (CPU time): {caps or 'none'}")


def section(name: str, rec: dict) -> str:
    fold_notes, table_rows = rec["folds"], rec["rows"]
    n0 = fold_notes[0]
    header = (f"### {name}\n\n{n0['train_pairs']} training pairs, {n0['test_queries']} test queries "
              f"against {n0['gallery']} clips" + (f", mean of {len(fold_notes)} folds" if len(fold_notes) > 1 else "")
              + f". Translator: {n0['parameters']:,} parameters, kept at step "
              + ", ".join(str(f["steps"]) for f in fold_notes)
              + f" (of {n0['epochs']} epochs), trained in {n0['train_s']} s (first fold); K, w chosen on validation: "
              + ", ".join(f"{f['chosen']['samples']}/{f['chosen']['guidance']:g}" for f in fold_notes) + ".\n\n"
              f"`python benchmarks/studies/translation_quality.py {rec.get('command', '')}`; {rec.get('training', '')}.\n")
    fmt = [{k: (f"{v:.3f}" if isinstance(v, float) and k != "median rank" else v) for k, v in r.items()} for r in table_rows]
    return (header + "\n" + markdown_table(fmt, ["method", "R@1", "R@5", "R@10", "mAP@10", "median rank", "N"])
            + "\n\n<details><summary>machine</summary>\n\n" + rec.get("machine", "") + "\n</details>\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--recipe", type=Path, default=None, help="training recipe (default: the built-in defaults, see below)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--interval", type=int, default=None, help="direction interval m (default: the recipe's / TrainConfig's)")
    ap.add_argument("--min-steps", type=int, default=3000, help="small datasets train at least this many steps")
    ap.add_argument("--max-steps", default="synthetic-100k=10000",
                    help="per-dataset step caps, e.g. synthetic-100k=10000 (CPU time), comma-separated")
    ap.add_argument("--val-queries", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=RESULTS / "translation_quality.md")
    args = ap.parse_args()

    base = TrainConfig.from_dict(load_recipe(args.recipe)) if args.recipe else TrainConfig()
    caps = dict((k, int(v)) for k, v in (item.split("=") for item in args.max_steps.split(",") if item))
    if args.epochs:
        base = replace(base, epochs=args.epochs)
    if args.interval:
        base = replace(base, interval=args.interval)
    store = args.out.with_suffix(".json")
    workdir = Path(tempfile.mkdtemp(prefix="translation_quality-"))
    try:
        for name in filter(None, args.datasets.split(",")):
            fold_rows, fold_notes = [], []
            for fold, train_pairs, test, same in folds(name):
                steps_per_epoch = -(-int(len(train_pairs) * 0.9) // base.batch_size)
                epochs = max(base.epochs, -(-args.min_steps // steps_per_epoch))
                config = replace(base, epochs=epochs, max_steps=caps.get(name))
                rows, notes = run_fold(fold, train_pairs, test, same, config, workdir, args.val_queries)
                notes.update({"fold": fold, "train_pairs": len(train_pairs), "test_queries": len(test),
                              "gallery": int(test.group.max()) + 1, "epochs": epochs})
                print(fold, json.dumps(notes), flush=True)
                for r in rows:
                    print("   ", r, flush=True)
                fold_rows.append(rows)
                fold_notes.append(notes)
            table_rows = fold_rows[0] if len(fold_rows) == 1 else average(fold_rows)
            # datasets may be run in several invocations, at once too: read the store again just before writing
            record = json.loads(store.read_text()) if store.exists() else {}
            record[name] = {"rows": table_rows, "folds": fold_notes, "per_fold": fold_rows,
                            "command": " ".join(sys.argv[1:]), "machine": machine_block({"datasets": name}),
                            "training": settings_line(base, args.min_steps, caps)}
            store.parent.mkdir(parents=True, exist_ok=True)
            text = json.dumps(record, indent=1, default=str)
            write_file_atomic(store, lambda fh: fh.write(text), "w")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    record = json.loads(store.read_text()) if store.exists() else {}

    sections = [section(name, record[name]) for name in DATASETS if name in record]
    text = f"""# Translation quality: query -> audio retrieval after translation

`python benchmarks/studies/translation_quality.py --datasets ...` (datasets may be run in several invocations;
this file holds every dataset stored in `translation_quality.json`, each with its own command, settings
and machine block).

Text/video -> audio retrieval over an exact inner-product search; R@k = share of queries whose
clip ranks < k (ties counted against the query); mAP@10 = mean 1/(rank+1) over ranks < 10; N =
number of queries. Seed {SEED}. K (samples) in {SAMPLES} and w (guidance) in {GUIDANCE} are chosen on
the validation split at S = 5 by R@1; the plain K = 1, w = 1 translation is shown beside it.
Training keeps the validated step (every epoch's end and every `val_every` steps) of best
validation R@1 among those after the first direction flip (`diffusion/train.py`); the
validation split is 10% of the training pairs (the synthetic files' own val split).

{chr(10).join(sections)}
"""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
