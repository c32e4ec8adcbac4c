"""When does translation peak? Query->audio R@1 step by step, for a few direction intervals m.

Trains the default translator (`TrainConfig()`: x0 prediction, InfoNCE weight 0.3, Adam 2e-4,
batch 64; keep-best off, so that every listed step is measured) with the direction flipping every
m steps, stopping at each listed step (exact resume), and measures text->audio R@1 of the test
queries at S = 5 with K samples and guidance w, beside the validation R@1 (the first 1,000
validation queries against every validation clip, as the training log measures it) at K = 1,
w = 1 and at K = 4, w = 4 (what keep-best ranks steps by, since this run), and ridge regression
(lambda chosen on the validation split). The test split is never used for any choice.

  synthetic-10k   diffgap_search.synthetic: 9,000 pairs to train (10% of them validation),
                  1,000 test queries among 1,000 clips
  synthetic-100k  90,000 to train, 10,000 test queries among 10,000 clips
  xmodel          ../shared/data/xmodel: clotho_dev -> clotho_eval (4,180 queries, 1,045 clips)

    python benchmarks/studies/translator_steps.py --runs "synthetic-10k:1000,100;synthetic-100k:100"   # ~15 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py
sys.path.insert(0, str(Path(__file__).resolve().parent))  # studies/: translation_quality.py
from common import RESULTS, machine_block, markdown_table  # noqa: E402
from translation_quality import evaluate, folds  # noqa: E402

from diffgap_search.baselines import fit_ridge  # noqa: E402
from diffgap_search.diffusion.train import STATE, TrainConfig, direction_at, train  # noqa: E402
from diffgap_search.metrics import recall_at, target_ranks  # noqa: E402
from diffgap_search.pairs import split_train_val  # noqa: E402

SETTINGS = [(5, 1, 1.0), (5, 4, 2.0), (5, 4, 4.0)]  # (S, K, w)
VAL_SETTINGS = [(1, 1.0), (4, 4.0)]  # (K, w) at S = 5
STEPS = {"synthetic-10k": [250, 500, 750, 1000, 1250, 1500, 2000, 3000, 4000],
         "synthetic-100k": [500, 1000, 1500, 2000, 3000],
         "xmodel": [1000, 2000, 4000, 6000]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="synthetic-10k:1000,100;synthetic-100k:100",
                    help="dataset:interval,interval;... (steps per dataset: see STEPS)")
    ap.add_argument("--out", type=Path, default=RESULTS / "translator_steps.md")
    args = ap.parse_args()
    plan = [(name, [int(m) for m in ms.split(",")]) for name, ms in (part.split(":") for part in args.runs.split(";"))]
    store = args.out.with_suffix(".json")
    rows, ridge_rows = [], []
    work = Path(tempfile.mkdtemp(prefix="translator-steps-"))
    try:
        for name, intervals in plan:
            _, train_pairs, test, _ = next(folds(name))
            fit, val = split_train_val(train_pairs, 0.1, 0)
            vg, vt = val.gallery()
            ridge, lam = fit_ridge(fit.a, fit.b, vg, val.b, vt)
            ridge_rows.append({"dataset": name, "ridge lambda": lam, "ridge R@1": f"{evaluate(ridge(test.b), test)['R@1']:.3f}",
                               "N": len(test)})
            print(ridge_rows[-1], flush=True)
            # as training validates: the first 1,000 validation queries against every validation clip
            vq = np.arange(min(len(val), 1000))
            for m in intervals:
                out = work / f"{name}-{m}"
                t0 = time.perf_counter()
                for steps in STEPS[name]:
                    config = TrainConfig(epochs=10**6, max_steps=steps, interval=m, val_fraction=0.1, keep_best=False)
                    translator = train(train_pairs, out, config, resume=(out / STATE).exists(), progress=False, log=lambda s: None)
                    row = {"dataset": name, "m": m, "steps": steps,
                           "to-audio steps": sum(direction_at(s, m) == 0 for s in range(steps))}
                    for k, w in VAL_SETTINGS:  # what keep-best could rank steps by: the training log's validation
                        x = translator.translate(val.b[vq], steps=5, samples=k, guidance=w, generator=torch.Generator().manual_seed(0))
                        row[f"val K{k} w{w:g}"] = f"{recall_at(target_ranks(x, vg, vt[vq]))['R@1']:.3f}"
                    for s, k, w in SETTINGS:
                        x = translator.translate(test.b, steps=s, samples=k, guidance=w, generator=torch.Generator().manual_seed(0))
                        row[f"test S{s} K{k} w{w:g}"] = f"{evaluate(x, test)['R@1']:.3f}"
                    row["s"] = round(time.perf_counter() - t0, 1)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    store.write_text(json.dumps({"ridge": ridge_rows, "rows": rows}, indent=1))

    text = f"""# Translator: query->audio R@1 step by step, by direction interval m

`python benchmarks/studies/translator_steps.py --runs "{args.runs}"`

The default translator (`TrainConfig()`: x0 prediction, MSE + 0.3 x InfoNCE, Adam 2e-4, batch 64,
EMA 0.999; keep-best off) trained with the direction flipping every m steps, stopped at each listed
step (exact resume, so one run per m); "to-audio steps" = the steps that trained the query->audio
direction so far. Test R@1 at S = 5 steps, K samples, guidance w, seed 0; "val K w" = R@1 of the
first 1,000 validation queries against all validation clips (the split and protocol training's log
uses) at S = 5, K, w: keep-best ranks validated steps by val K4 w4 (K1 w1 before).
"s" = time since the start of that run, evaluation included (other jobs shared the 2 cores).

{machine_block()}

{markdown_table(ridge_rows, list(ridge_rows[0]))}

{markdown_table(rows, list(rows[0]))}
"""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
