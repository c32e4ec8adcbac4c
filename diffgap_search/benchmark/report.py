"""The benchmark's report: Markdown tables, PREFIX.md / .json, and the R@1 and steps plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from diffgap_search.types import Direction

DIRECTIONS = tuple(d.label for d in Direction)  # "query->audio", "audio->query"
METRICS = ("R@1", "R@5", "R@10", "mAP@10", "median rank")
ABLATION_STEPS = (50, 20, 5)  # the paper's Table V


def _fmt(row: dict, metric: str) -> str:
    v = row.get(metric)
    if v is None:
        return "-"
    return f"{v:.1f}" if metric == "median rank" else f"{v:.3f}"


def report_tables(record: dict) -> str:
    """The Markdown tables (what the command prints, and the body of PREFIX.md)."""
    from diffgap_search.machine import markdown_table

    parts = []
    for title, rows in [("Methods", record["rows"])] + [(f"Ablation: {k}", v) for k, v in record["ablations"].items()]:
        for d in DIRECTIONS:
            sub = [r for r in rows if r["direction"] == d]
            if not sub:
                continue
            table = [{"method": r["method"], **{m: _fmt(r, m) for m in METRICS}, "N": r.get("N", "-"),
                      "settings": r.get("settings", "")} for r in sub]
            parts.append(f"### {title}, {d}\n\n" + markdown_table(table, ["method", *METRICS, "N", "settings"]))
    return "\n\n".join(parts)


def write_report(record: dict, out: Path) -> None:
    from diffgap_search.storage import write_file_atomic, write_json_atomic

    out.parent.mkdir(parents=True, exist_ok=True)
    n0 = record["folds"][0]
    folds = len(record["folds"])
    lines = [f"# Benchmark: {Path(record['pairs']).name}", "",
             f"`diffgap-search benchmark {record['command']}`", "",
             f"{n0['test_queries']:,} test queries against {n0['test_clips']:,} clips"
             + (f" per fold, {folds} folds (metrics are the mean over folds; N is summed)" if folds > 1 else "")
             + (f"; {n0['train_pairs']:,} training pairs" if n0["train_pairs"] else "")
             + f". Seed {record['seed']}. Wall time {record['wall_s']:.0f} s.", "",
             "laion_clap protocol: query->audio ranks each query's clip among the test clips; audio->query ranks each "
             "clip's best query among all test queries. R@k = share of queries with rank < k; mAP@10 = mean 1/(rank+1) "
             "over ranks < 10; median rank is 1-based; ties count against the query. Hyperparameters (ridge lambda, "
             "MLP dropout and epoch, DiffGAP K and w, fusion weights) are chosen on a validation split of the training "
             "pairs, never on the test pairs.", ""]
    if record.get("training"):
        t = record["training"]
        lines += [f"DiffGAP training: {json.dumps({k: v for k, v in t.items() if k not in ('network', 'schedule')})}, "
                  f"network {json.dumps(t['network'])}; translation S={record['steps']}; rerank N={record['candidates']}.", ""]
    for notes in record["folds"]:
        tn = notes.get("translator")
        if tn and not tn.get("given"):
            lines.append(f"- {notes['fold']}: translator {tn['parameters']:,} parameters, trained in {tn['train_s']} s, "
                         f"kept epoch {tn['kept_epoch']} ({tn['kept_steps']} steps, {tn['from_audio_steps_at_kept']} of "
                         f"them from-audio); K, w chosen: " + ", ".join(
                             f"{d} {v['K']}/{v['w']:g}" for d, v in notes["sampling"].items()))
            if tn["bidirectional"] and tn["from_audio_steps_at_kept"] == 0:
                lines.append("  **the from-audio direction had no training step before the kept epoch**: audio->query "
                             "translation and the diffusion score are untrained (lower the interval)")
    lines += ["", report_tables(record), "", f"![R@1 per method]({out.name}-r1.png)"]
    if "steps" in record["ablations"]:
        lines.append(f"![R@1 against sampling steps]({out.name}-steps.png)")
    lines += ["", "<details><summary>machine</summary>", "",
              "\n".join(f"- {k}: {v}" for k, v in record["machine"].items()), "</details>", ""]
    text = "\n".join(lines)
    record["markdown"] = text
    write_json_atomic({k: v for k, v in record.items() if k != "markdown"}, out.with_name(out.name + ".json"))
    write_file_atomic(out.with_name(out.name + ".md"), lambda fh: fh.write(text), mode="w")
    plot_r1(record, out.with_name(out.name + "-r1.png"))
    if "steps" in record["ablations"]:
        plot_steps(record, out.with_name(out.name + "-steps.png"))


def plot_r1(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in record["rows"] if "R@1" in r]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, ax = plt.subplots(figsize=(1.2 * len(methods) + 2, 3.6))
    x = np.arange(len(methods))
    for i, d in enumerate(DIRECTIONS):
        values = [next((r["R@1"] for r in rows if r["method"] == m and r["direction"] == d), np.nan) for m in methods]
        bars = ax.bar(x + (i - 0.5) * 0.38, values, 0.38, label=d)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(x, methods)
    ax.set_ylabel("R@1")
    ax.set_title(f"{Path(record['pairs']).name}: R@1 per method (N = {rows[0]['N'] if rows else 0} queries)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save_figure(fig, path)


def plot_steps(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = record["ablations"]["steps"]
    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    for d in DIRECTIONS:
        pts = sorted((int(r["method"].split("=")[1]), r["R@1"]) for r in rows if r["direction"] == d and "R@1" in r)
        if pts:
            ax.plot(*zip(*pts), marker="o", label=d)
    ax.set_xlabel("DDIM sampling steps S")
    ax.set_ylabel("R@1")
    ax.set_xticks(list(ABLATION_STEPS))
    ax.set_title(f"{Path(record['pairs']).name}: DiffGAP R@1 against S", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save_figure(fig, path)


def _save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    from diffgap_search.storage import write_file_atomic

    write_file_atomic(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
    plt.close(fig)
