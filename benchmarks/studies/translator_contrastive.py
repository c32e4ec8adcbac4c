"""Does the contrastive (InfoNCE) term help DiffGAP translation? A sweep of its weight.

Trains the default translator (`TrainConfig()`, keep-best off so that every listed epoch is
measured) with `contrastive_weight` lambda in `--weights` (0 = the paper's pure denoising loss),
and after the listed epochs measures query->audio R@1 on the test set at a few sampling settings
(S steps, K samples, guidance w), beside ridge regression (lambda chosen on a validation split):

  synthetic-100k  diffgap_search.synthetic, its fixed split: 90,000 pairs to train, 10,000 test
                  queries among 10,000 clips; interval 10**9 (these epochs train to-audio only,
                  which is all that is measured)
  xmodel          ../shared/data/xmodel: train on clotho_dev, 4,180 queries among clotho_eval's
                  1,045 clips; interval 1000

    python benchmarks/studies/translator_contrastive.py                       # ~30 min on 2 CPU cores
    python benchmarks/studies/translator_contrastive.py --device cuda --out benchmarks/results/translator_contrastive_cuda.md
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py and the measuring scripts
from common import RESULTS, machine_block, markdown_table  # noqa: E402

from diffgap_search.baselines import fit_ridge  # noqa: E402
from diffgap_search.diffusion.train import STATE, TrainConfig, train  # noqa: E402
from diffgap_search.metrics import recall_at, target_ranks  # noqa: E402
from diffgap_search.pairs import Pairs, read_pairs, split_train_val  # noqa: E402
from diffgap_search.synthetic import GapConfig, make_pairs, split_of  # noqa: E402

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SETTINGS = [(1, 1, 1.0), (5, 1, 1.0), (5, 4, 2.0), (5, 4, 4.0)]  # (S, K, w)


def dataset(name: str) -> tuple[Pairs, Pairs, int]:
    """(train, test, interval)."""
    import pyarrow as pa

    if name == "synthetic-100k":
        p = make_pairs(100_000, GapConfig(), seed=0)
        split = split_of(p.pair_id)
        n = len(p.a)
        both = Pairs(a=p.a, b=p.b, pair_id=np.arange(n), group=np.arange(n), group_id=np.arange(n), split=None,
                     metadata=pa.table({"row": np.arange(n)}), source=name)
        return both.subset(np.flatnonzero(split != "test")), both.subset(np.flatnonzero(split == "test")), 10**9
    if name == "xmodel":
        return read_pairs(SHARED / "xmodel" / "clotho_dev.parquet"), read_pairs(SHARED / "xmodel" / "clotho_eval.parquet"), 1000
    raise SystemExit(f"unknown dataset {name}")


def r1(x: np.ndarray, test: Pairs) -> float:
    gallery, target = test.gallery()
    return recall_at(target_ranks(x, gallery, target))["R@1"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="synthetic-100k,xmodel")
    ap.add_argument("--weights", default="0,0.3,1")
    ap.add_argument("--epochs", default="synthetic-100k=1,2,4;xmodel=20,40",
                    help="epochs after which to measure, per dataset")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=RESULTS / "translator_contrastive.md")
    args = ap.parse_args()
    plan = {k: [int(e) for e in v.split(",")] for k, v in (part.split("=") for part in args.epochs.split(";"))}
    weights = [float(w) for w in args.weights.split(",")]
    rows, ridge_rows = [], []
    work = Path(tempfile.mkdtemp(prefix="translator-contrastive-"))
    try:
        for name in args.datasets.split(","):
            train_pairs, test, interval = dataset(name)
            fit, val = split_train_val(train_pairs, 0.1, 0)
            vg, vt = val.gallery()
            ridge, lam = fit_ridge(fit.a, fit.b, vg, val.b, vt)
            ridge_rows.append({"dataset": name, "ridge lambda": lam, "ridge R@1": f"{r1(ridge(test.b), test):.3f}", "N": len(test)})
            print(ridge_rows[-1], flush=True)
            for weight in weights:
                out = work / f"{name}-{weight}"
                t0 = time.perf_counter()
                for epochs in plan[name]:
                    config = TrainConfig(epochs=epochs, val_fraction=0.1, keep_best=False, interval=interval,
                                         contrastive_weight=weight)
                    translator = train(train_pairs, out, config, resume=(out / STATE).exists(), device=args.device,
                                       progress=False, log=lambda s: None)
                    row = {"dataset": name, "contrastive weight": weight, "epoch": epochs,
                           "steps": translator.config.training["steps"]}
                    for s, k, w in SETTINGS:
                        x = translator.translate(test.b, steps=s, samples=k, guidance=w, generator=torch.Generator().manual_seed(0))
                        row[f"S{s} K{k} w{w:g}"] = f"{r1(x, test):.3f}"
                    row["s"] = round(time.perf_counter() - t0, 1)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    command = "python benchmarks/studies/translator_contrastive.py" + "".join(
        f" --{k} {v}" for k, v in (("datasets", args.datasets), ("weights", args.weights), ("device", args.device)))
    text = f"""# Translator: the contrastive (InfoNCE) term, weight by weight

`{command} --epochs "{args.epochs}"`

The default translator (x0 prediction, Adam 2e-4, batch 64; keep-best off) trained with the loss
MSE + lambda x InfoNCE(x0_hat, batch targets; temperature 0.1) (`diffusion/loss.py: step_loss`);
lambda = 0 is the paper's pure denoising loss. After the listed epochs: query->audio R@1 on the
test set at S steps, K samples, guidance w (seed 0). Ridge regression beside it (lambda chosen on a
validation split). "s" is the time since the start of that weight's run, evaluation included.

{machine_block({"device": args.device, "seed": 0})}

{markdown_table(ridge_rows, list(ridge_rows[0]))}

{markdown_table(rows, list(rows[0]))}
"""
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
