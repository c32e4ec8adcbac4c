"""Retrieval against denoising loss, epoch by epoch, on synthetic-100k.

Trains the default translator on synthetic-100k (its fixed train/val/test split; 80k training
pairs, 1,250 steps per epoch) one epoch at a time (exact resume, last epoch kept) and after each
epoch measures text->audio R@1 on the 10,000 test queries (gallery 10,000 clips) at a few sampling
settings, beside the validation loss and the training log's validation R@1. It shows whether
retrieval improves as the denoising objective does.

    python benchmarks/studies/translator_epochs.py --epochs 4
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py
sys.path.insert(0, str(Path(__file__).resolve().parent))  # studies/: translation_quality.py
from common import RESULTS, machine_block, markdown_table  # noqa: E402
from translation_quality import evaluate, folds  # noqa: E402

from diffgap_search.baselines import fit_ridge  # noqa: E402
from diffgap_search.diffusion.train import TrainConfig, train  # noqa: E402
from diffgap_search.pairs import split_train_val  # noqa: E402

SETTINGS = [(1, 1, 1.0), (5, 1, 1.0), (5, 4, 2.0), (5, 4, 4.0)]  # (S, K, w)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--out", type=Path, default=RESULTS / "translator_epochs.md")
    args = ap.parse_args()

    _, train_pairs, test, _ = next(folds("synthetic-100k"))
    fit, val = split_train_val(train_pairs, 0.1, 0)
    vg, vt = val.gallery()
    ridge, lam = fit_ridge(fit.a, fit.b, vg, val.b, vt)
    ridge_r1 = evaluate(ridge(test.b), test)["R@1"]
    work = Path(tempfile.mkdtemp(prefix="translator-epochs-"))
    rows = []
    try:
        for epoch in range(1, args.epochs + 1):
            t0 = time.perf_counter()
            translator = train(train_pairs, work / "m", TrainConfig(epochs=epoch, val_fraction=0.1, keep_best=False, contrastive_weight=0.0, interval=5000),
                               resume=epoch > 1, progress=False, log=lambda s: None)
            log = json.loads((work / "m" / "log.jsonl").read_text().splitlines()[-1])
            row = {"epoch": epoch, "steps": translator.config.training["steps"],
                   "train loss": f"{log['train_loss']:.4f}", "val loss": f"{log['val_loss_to-audio']:.4f}",
                   "val R@1 (log, S5 K1 w1)": f"{log['val_R@1']:.3f}"}
            for s, k, w in SETTINGS:
                x = translator.translate(test.b, steps=s, samples=k, guidance=w, generator=torch.Generator().manual_seed(0))
                row[f"test R@1 S{s} K{k} w{w:g}"] = f"{evaluate(x, test)['R@1']:.3f}"
            row["s"] = round(time.perf_counter() - t0, 1)
            rows.append(row)
            print(row, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    text = f"""# Translator: retrieval against denoising loss, epoch by epoch (synthetic-100k)

`python benchmarks/studies/translator_epochs.py --epochs {args.epochs}`

The default translator with the paper's loss (`TrainConfig(contrastive_weight=0, interval=5000)`: x0 prediction, Adam 2e-4,
batch 64, m = 5000, direct condition path) trained on synthetic-100k's 90,000 non-test pairs (the file's val split, 10,000 pairs, for the
log), one epoch at a time with exact resume; after each epoch, text->audio R@1 of the 10,000 test
queries among 10,000 clips (exact search). Ridge regression (lambda {lam:g} chosen on val): R@1
{ridge_r1:.3f}. "s" is the wall time of the epoch plus its evaluation (other jobs shared the CPU).

{machine_block({"N (test queries)": len(test), "gallery": int(test.group.max()) + 1})}

{markdown_table(rows, list(rows[0]))}
"""
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
