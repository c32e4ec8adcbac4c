"""What makes the translator retrieve well? Training variants x sampling settings on xmodel.

Trains one translator per variant on ../shared/data/xmodel/clotho_dev (MiniLM 384-d clips
<- LSA 256-d captions; 10% of the clips held out for validation) and measures
text->clip R@1 / R@10 among clotho_eval's 1,045 clips (4,180 queries) for a grid of
sampling settings (S steps, K samples, guidance w), beside ridge regression.

Each variant's numbers are stored in benchmarks/results/translator_study.json as it
finishes (runs may be split: `--variants eps`), and the Markdown table is rebuilt
from all stored variants.

    python benchmarks/studies/translator_study.py --variants base,film-only,eps,v,interval1000
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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py and the measuring scripts
from common import RESULTS, machine_block, markdown_table  # noqa: E402

from diffgap_search.baselines import fit_ridge  # noqa: E402
from diffgap_search.diffusion.network import NetworkConfig  # noqa: E402
from diffgap_search.diffusion.schedule import ScheduleConfig  # noqa: E402
from diffgap_search.diffusion.train import TrainConfig, train  # noqa: E402
from diffgap_search.metrics import recall_at, target_ranks  # noqa: E402
from diffgap_search.pairs import read_pairs, split_train_val  # noqa: E402

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "xmodel"
BASE = TrainConfig(epochs=30, val_fraction=0.1, interval=5000)  # the paper's settings: Adam 2e-4, batch 64, m = 5000
VARIANTS = {
    "base": ("x0 (sample) prediction, paper settings, direct condition path, best epoch kept", BASE),
    "no-cond-input": ("as base, without the direct condition path and keeping the last epoch (the first design)",
                      replace(BASE, keep_best=False, network=NetworkConfig(cond_input=False))),
    "film-only": ("as base, without the direct condition path (condition through FiLM only), best epoch kept",
                  replace(BASE, network=NetworkConfig(cond_input=False))),
    "eps": ("epsilon prediction", replace(BASE, schedule=ScheduleConfig(prediction_type="epsilon"))),
    "v": ("v prediction", replace(BASE, schedule=ScheduleConfig(prediction_type="v_prediction"))),
    "lr1e-3": ("x0, lr 1e-3", replace(BASE, lr=1e-3)),
    "interval1000": ("x0, direction flips every 1000 steps (BST active)", replace(BASE, interval=1000)),
    "cosine": ("x0, squaredcos_cap_v2 betas", replace(BASE, schedule=ScheduleConfig(beta_schedule="squaredcos_cap_v2"))),
}
GRID = [(5, 1, 1.0), (5, 1, 4.0), (5, 4, 4.0), (5, 16, 1.0), (5, 16, 4.0), (5, 16, 6.0), (5, 16, 8.0),
        (2, 16, 4.0), (1, 1, 4.0)]  # S = 20 / 50 beside S = 5: translation_quality.md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", type=Path, default=RESULTS / "translator_study.md")
    args = ap.parse_args()
    store = args.out.with_suffix(".json")
    record = json.loads(store.read_text()) if store.exists() else {}

    dev = read_pairs(SHARED / "clotho_dev.parquet")
    test = read_pairs(SHARED / "clotho_eval.parquet")
    gallery, target = test.gallery()
    fit, val = split_train_val(dev, 0.1, 0)
    vg, vt = val.gallery()
    ridge, lam = fit_ridge(fit.a, fit.b, vg, val.b, vt)
    record["ridge"] = {"lambda": lam, **recall_at(target_ranks(ridge(test.b), gallery, target))}

    for name in args.variants.split(","):
        label, config = VARIANTS[name]
        work = Path(tempfile.mkdtemp(prefix=f"study-{name}-"))
        try:
            t0 = time.perf_counter()
            translator = train(dev, work / "m", config, progress=False, log=print)
            seconds = time.perf_counter() - t0
            log = [json.loads(line) for line in (work / "m" / "log.jsonl").read_text().splitlines()]
            results = {}
            for steps, k, w in GRID:
                x = translator.translate(test.b, steps=steps, samples=k, guidance=w, generator=torch.Generator().manual_seed(0))
                r = recall_at(target_ranks(x, gallery, target))
                results[f"S={steps} K={k} w={w:g}"] = {"R@1": r["R@1"], "R@10": r["R@10"]}
                print(name, steps, k, w, f"R@1 {r['R@1']:.3f} R@10 {r['R@10']:.3f}", flush=True)
            kept = translator.config.training.get("epoch", {})
            record[name] = {"label": label, "train_s": round(seconds, 1), "steps": translator.config.training["steps"],
                            "kept_epoch": f"{kept.get('epoch', '?')} of {len(log)}",
                            "final_train_loss": log[-1]["train_loss"], "final_val_loss": log[-1]["val_loss_to-audio"],
                            "best_val_loss": min(r["val_loss_to-audio"] for r in log), "results": results}
            store.parent.mkdir(parents=True, exist_ok=True)
            store.write_text(json.dumps(record, indent=1))
        finally:
            shutil.rmtree(work, ignore_errors=True)

    variants = [v for v in VARIANTS if v in record]
    columns = ["setting"] + variants
    rows = []
    for steps, k, w in GRID:
        key = f"S={steps} K={k} w={w:g}"
        rows.append({"setting": key, **{v: f"{record[v]['results'][key]['R@1']:.3f} / {record[v]['results'][key]['R@10']:.3f}"
                                         for v in variants if key in record[v]["results"]}})
    rows.append({"setting": "final train / val loss", **{v: f"{record[v]['final_train_loss']:.3f} / {record[v]['final_val_loss']:.3f}" for v in variants}})
    rows.append({"setting": "epoch kept", **{v: record[v].get("kept_epoch", "last") for v in variants}})
    rows.append({"setting": "train s (steps)", **{v: f"{record[v]['train_s']} ({record[v]['steps']})" for v in variants}})
    ridge = record["ridge"]
    text = f"""# Translator study: prediction target, schedule, learning rate, BST interval, sampling

`python benchmarks/studies/translator_study.py --variants {args.variants}` (variants may be run in several
invocations; the table holds every variant stored in `translator_study.json`).

xmodel: train on clotho_dev (10% of clips held out for validation), text->clip retrieval among
clotho_eval's 1,045 clips, 4,180 queries. Cells: R@1 / R@10. Ridge (lambda {ridge['lambda']:g}, chosen on
validation): R@1 {ridge['R@1']:.3f} / R@10 {ridge['R@10']:.3f}. Variants:
{chr(10).join(f"- `{v}`: {record[v]['label']}" for v in variants)}

{machine_block({"test queries": 4180, "gallery": 1045})}

{markdown_table(rows, columns)}
"""
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
