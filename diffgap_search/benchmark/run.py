"""Running the benchmark: one fold at a time, every method side by side, then the ablations.

For each fold (one train/test split, or K of them with `kfold`):

1. every baseline is fitted on the training pairs, its hyperparameters chosen on a validation
   split of them (the split `diffusion.train.train` holds out; never the test pairs);
2. one DiffGAP translator is trained (both directions) and its sampling K and w chosen per
   direction on the validation split at S = 5;
3. the test pairs are scored in both directions with the laion_clap protocol;
   `rerank` and `fusion` run the engine's own query chain (`Engine.run`) over an exact
   in-memory index of the test gallery, fusion with the settings `calibrate` chose on the
   validation split (or, with --model, those stored beside the translator);
4. the ablations asked for: sampling steps S, the direction interval m, CDM and BST on/off.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffgap_search.benchmark.data import (
    DIFFGAP_METHODS,
    TRAINED_BASELINES,
    Fold,
    Validation,
    benchmark_folds,
    choose_methods,
)
from diffgap_search.benchmark.methods import (
    can_score,
    chain_ranks,
    choose_sampling,
    fit_baseline,
    ranks_of,
    train_config,
    train_translator,
    translation_scores,
)
from diffgap_search.benchmark.report import DIRECTIONS, METRICS, ABLATION_STEPS, write_report
from diffgap_search.calibrate import shares_space
from diffgap_search.errors import DiffgapError
from diffgap_search.metrics import recall_at
from diffgap_search.pairs import split_train_val
from diffgap_search.signals import FusionConfig
from diffgap_search.types import Direction

ABLATIONS = ("steps", "interval", "components")
ABLATION_INTERVALS = (100, 1000, 5000, 10000)  # Table VI's, and our default 100
# The benchmark's training settings when no --recipe is given: the translator's defaults (interval 100:
# retrieval peaks within the first ~1,000-2,000 steps on these sets; benchmarks/results/translator_steps.md).
DEFAULT_TRAINING = {"epochs": 30, "interval": 100, "val_fraction": 0.1}


@dataclass(frozen=True)
class BenchmarkOptions:
    methods: tuple[str, ...] | None = None  # None: every method the data allow
    ablate: tuple[str, ...] = ()
    training: dict = field(default_factory=lambda: dict(DEFAULT_TRAINING))  # TrainConfig settings
    kfold: int | None = None
    seed: int = 0
    steps: int = 20  # S of the diffgap translation and of rerank's first stage
    candidates: int = 100  # N of rerank
    device: str = "cpu"
    progress: bool = True


def _row(method: str, direction: str, ranks: np.ndarray, settings: str = "", seconds: float | None = None) -> dict:
    m = recall_at(ranks)
    return {"method": method, "direction": direction, **{k: m[k] for k in (*METRICS, "N")}, "settings": settings,
            **({"s": round(seconds, 1)} if seconds is not None else {})}


def _na(method: str, direction: str, why: str) -> dict:
    return {"method": method, "direction": direction, "settings": f"n/a: {why}"}


class FoldRun:
    """The state of one fold: its data, validation split, translator and the rows made so far."""

    def __init__(self, fold: Fold, methods: list[str], options: BenchmarkOptions, workdir: Path, log, bar):
        self.fold, self.methods, self.options, self.workdir, self.log, self.bar = fold, methods, options, workdir, log, bar
        self.test = fold.test
        self.gallery, _ = self.test.gallery()
        self.same = shares_space(self.test)
        self.rows: list[dict] = []
        self.ablations: dict[str, list[dict]] = {}
        self.notes: dict = {"fold": fold.name, "test_queries": len(self.test), "test_clips": len(self.gallery),
                            "train_pairs": len(fold.train) if fold.train is not None else 0}
        self.val: Validation | None = None
        self.translator = None
        self.sampling: dict = {}

    def tick(self, stage: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.fold.name}: {stage}")
            self.bar.update(1)

    def workname(self, suffix: str) -> str:
        return f"{self.fold.name}-{suffix}".replace("/", "of").replace(" ", "_")

    # -- baselines -----------------------------------------------------------------------

    def baselines(self) -> None:
        test, group = self.test, self.test.group
        if "raw" in self.methods:
            raw = test.b @ self.gallery.T
            r = ranks_of({"query->audio": raw, "audio->query": np.ascontiguousarray(raw.T)}, group)
            self.rows += [_row("raw", d, r[d], "cosine of the raw vectors") for d in DIRECTIONS]
            self.tick("raw")
        if self.fold.train is None:
            return
        config = train_config(self.options)
        fit, val_pairs = split_train_val(self.fold.train, config.val_fraction, config.seed)
        if val_pairs is None:
            raise DiffgapError("the benchmark chooses hyperparameters on a validation split; val_fraction must be > 0")
        self.val = Validation.of(val_pairs, self.options.seed)
        self.notes["val_clips"], self.notes["val_queries"] = len(self.val.gallery), len(self.val.pairs)
        for method in (m for m in TRAINED_BASELINES if m in self.methods):
            t0 = time.perf_counter()
            forward, s_f = fit_baseline(method, fit, self.val, False, self.options.seed)
            reverse, s_r = fit_baseline(method, fit, self.val, True, self.options.seed)
            r = ranks_of({"query->audio": forward(test.b) @ self.gallery.T, "audio->query": reverse(self.gallery) @ test.b.T}, group)
            seconds = time.perf_counter() - t0
            self.rows += [_row(method, d, r[d], s, seconds) for d, s in zip(DIRECTIONS, (s_f, s_r))]
            self.log(f"  {method}: R@1 {self.rows[-2]['R@1']:.3f} / {self.rows[-1]['R@1']:.3f} ({seconds:.0f} s)")
            self.tick(method)

    # -- DiffGAP ---------------------------------------------------------------------------

    def prepare_translator(self, translator) -> None:
        if translator is None:
            translator, self.notes["translator"] = train_translator(self.fold.train, train_config(self.options), self.workdir,
                                                                    self.workname("main"), self.options, self.log)
            self.tick("train diffgap")
            self.warn_untrained(self.notes["translator"])
        else:
            self.notes["translator"] = {"parameters": translator.parameter_count, "given": True,
                                        "bidirectional": translator.config.bidirectional}
        self.translator = translator
        if self.val is not None:
            self.sampling, self.notes["sampling_grid"] = choose_sampling(translator, self.val, self.options.seed)
        else:
            from diffgap_search.calibrate import default_configs

            stored = default_configs(translator)
            self.sampling = {d.label: (stored[d].samples, stored[d].guidance) for d in Direction}
        self.notes["sampling"] = {d: {"K": k, "w": w} for d, (k, w) in self.sampling.items()}

    def warn_untrained(self, notes: dict) -> None:
        if notes.get("bidirectional") and notes.get("from_audio_steps_at_kept") == 0:
            self.log(f"  warning: {self.fold.name}: the from-audio direction had no training step before the kept step; "
                     "audio->query translation and the diffusion score are untrained (lower the interval)")

    def diffgap_rows(self, translator, label: str, steps: int, sampling=None) -> tuple[list[dict], dict]:
        sampling = sampling or self.sampling
        t0 = time.perf_counter()
        scores = translation_scores(translator, self.test, sampling, steps, self.options.seed)
        r = ranks_of(scores, self.test.group)
        seconds = time.perf_counter() - t0
        out = []
        for d in DIRECTIONS:
            k, w = sampling[d]
            how = "one forward pass (no diffusion)" if getattr(translator, "deterministic", False) else f"S={steps}, K={k}, w={w:g}"
            if d == "audio->query" and not translator.config.bidirectional:
                how += "; no from-audio direction: query->audio scores transposed"
            out.append(_row(label, d, r[d], how, seconds))
        return out, scores

    def rerank_rows(self, translator, label: str, sampling: dict) -> list[dict]:
        """DiffGAP's top-N re-scored by the diffusion score of the other direction (translated 1, diffusion 0.5)."""
        out = []
        for direction in Direction:
            k, w = sampling[direction.label]
            if not can_score(translator, direction.reverse):
                out.append(_na(label, direction.label, "no from-audio direction (BST off)"))
                continue
            config = FusionConfig(candidates=self.options.candidates, steps=self.options.steps, samples=k, guidance=w,
                                  seed=self.options.seed).with_weights(translated=1.0, diffusion=0.5)
            t0 = time.perf_counter()
            r = chain_ranks(translator, self.test, direction, config, raw=False, rerank=True)
            out.append(_row(label, direction.label, r, f"top-{config.candidates} of diffgap; translated 1, diffusion 0.5 "
                            f"({direction.reverse.value} score, J={config.timesteps})", time.perf_counter() - t0))
        return out

    def fusion_rows(self) -> list[dict]:
        """The calibrated engine in both directions: `calibrate` on the validation split (or the stored calibration)."""
        from diffgap_search.calibrate import calibrate_directions, default_configs

        translator = self.translator
        if self.val is not None:
            t0 = time.perf_counter()
            base = {d: FusionConfig(samples=self.sampling[d.label][0], guidance=self.sampling[d.label][1], seed=self.options.seed)
                    for d in Direction}
            calibrations = calibrate_directions(translator, self.val.pairs, base)
            configs = {d: c.config for d, c in calibrations.items()}
            self.notes["calibration"] = {d.label: {"chosen": c.config.to_dict(), "val": c.scores} for d, c in calibrations.items()}
            self.notes["calibration"]["s"] = round(time.perf_counter() - t0, 1)
        else:
            from diffgap_search.calibrate import load_calibration

            if translator.path is None or not load_calibration(translator.path):
                return [_na("fusion", d, "the model is not calibrated (run `diffgap-search calibrate`) and no --train pairs "
                            "were given") for d in DIRECTIONS]
            configs = default_configs(translator)
        out = []
        for direction in Direction:
            if direction not in configs or not can_score(translator, direction.reverse):
                out.append(_na("fusion", direction.label, "no from-audio direction (BST off)"))
                continue
            c = configs[direction]
            t0 = time.perf_counter()
            r = chain_ranks(translator, self.test, direction, c, raw=self.same)
            settings = ", ".join(f"{n} {w:g}" for n, w in c.weights.items()) + f"; N={c.candidates}, S={c.steps}, K={c.samples}, w={c.guidance:g}"
            out.append(_row("fusion", direction.label, r, settings, time.perf_counter() - t0))
        return out

    # -- ablations -------------------------------------------------------------------------

    def ablate(self) -> None:
        options = self.options
        if "steps" in options.ablate:
            self.ablations["steps"] = [row for s in ABLATION_STEPS for row in self.diffgap_rows(self.translator, f"S={s}", s)[0]]
            self.tick("ablation: steps")
        if "interval" in options.ablate:
            self.ablations["interval"] = []
            for m in ABLATION_INTERVALS:
                if m == self.translator.config.training.get("interval") and self.translator.config.bidirectional:
                    t, t_notes = self.translator, self.notes["translator"]
                else:
                    t, t_notes = train_translator(self.fold.train, train_config(options, interval=m), self.workdir,
                                                  self.workname(f"interval{m}"), options, self.log)
                sampling, _ = choose_sampling(t, self.val, options.seed)
                rows, _ = self.diffgap_rows(t, f"m={m}", options.steps, sampling)
                for row in rows:
                    row["settings"] += (f"; kept epoch {t_notes.get('kept_epoch')}, {t_notes.get('from_audio_steps_at_kept')} "
                                        f"of {t_notes.get('kept_steps')} steps from-audio")
                self.ablations["interval"] += rows + self.rerank_rows(t, f"m={m} + rerank", sampling)
                self.tick(f"ablation: interval {m}")
        if "components" in options.ablate:
            from diffgap_search.baselines import DirectDenoiser

            self.ablations["components"] = []
            variants = (("CDM on, BST on", True, True), ("CDM on, BST off", True, False),
                        ("CDM off, BST on", False, True), ("CDM off, BST off", False, False))
            for label, cdm, bst in variants:
                config = train_config(options, bidirectional=bst)
                if cdm and bst:
                    t = self.translator
                elif cdm:
                    t, _ = train_translator(self.fold.train, config, self.workdir, self.workname("no-bst"), options, self.log)
                else:
                    t0 = time.perf_counter()
                    t = DirectDenoiser(config).fit(self.fold.train)
                    self.log(f"  trained the deterministic network ({label}) in {time.perf_counter() - t0:.0f} s")
                sampling = choose_sampling(t, self.val, options.seed)[0] if cdm else {d: (1, 1.0) for d in DIRECTIONS}
                self.ablations["components"] += self.diffgap_rows(t, label, options.steps if cdm else 1, sampling)[0]
                self.tick(f"ablation: {label}")


def run_fold(fold: Fold, methods: list[str], options: BenchmarkOptions, workdir: Path, translator=None,
             log=lambda s: None, bar=None) -> tuple[list[dict], dict, dict]:
    """(rows, ablation rows by name, notes) of one fold."""
    run = FoldRun(fold, methods, options, workdir, log, bar)
    log(f"{fold.name}: {len(run.test):,} test queries, {len(run.gallery):,} clips"
        + (f", {len(fold.train):,} training pairs" if fold.train is not None else ""))
    run.baselines()
    if not any(m in methods for m in DIFFGAP_METHODS) and not options.ablate:
        return run.rows, run.ablations, run.notes
    run.prepare_translator(translator)
    if "diffgap" in methods:
        rows, _ = run.diffgap_rows(run.translator, "diffgap", options.steps)
        run.rows += rows
        log(f"  diffgap: R@1 {rows[0]['R@1']:.3f} / {rows[1]['R@1']:.3f}")
        run.tick("diffgap")
    for method, make in (("rerank", lambda: run.rerank_rows(run.translator, "rerank", run.sampling)), ("fusion", run.fusion_rows)):
        if method in methods:
            rows = make()
            run.rows += rows
            log(f"  {method}: R@1 {rows[0].get('R@1', float('nan')):.3f} / {rows[1].get('R@1', float('nan')):.3f}")
            run.tick(method)
    run.ablate()
    return run.rows, run.ablations, run.notes


def average_rows(per_fold: list[list[dict]]) -> list[dict]:
    """Mean of each metric over folds, N summed (rows matched by method and direction)."""
    if len(per_fold) == 1:
        return per_fold[0]
    out = []
    for first in per_fold[0]:
        key = (first["method"], first["direction"])
        same = [r for rows in per_fold for r in rows if (r["method"], r["direction"]) == key]
        if "R@1" not in first:
            out.append(first)
            continue
        merged = {"method": key[0], "direction": key[1], **{m: float(np.mean([r[m] for r in same])) for m in METRICS},
                  "N": int(sum(r["N"] for r in same))}
        settings = {r["settings"] for r in same}
        merged["settings"] = settings.pop() if len(settings) == 1 else "chosen per fold (see the JSON)"
        out.append(merged)
    return out


def _check_request(options: BenchmarkOptions, train, model) -> None:
    unknown = [a for a in options.ablate if a not in ABLATIONS]
    if unknown:
        raise DiffgapError(f"--ablate {unknown[0]!r}: choose from {', '.join(ABLATIONS)}")
    if train is not None and model is not None:
        raise DiffgapError("give --train (a translator is trained) or --model (a trained one is used), not both")
    if model is not None and options.kfold is not None:
        raise DiffgapError("--kfold trains on each fold; it cannot use a given --model")
    if model is not None and set(options.ablate) - {"steps"}:
        raise DiffgapError("--ablate interval/components retrain the translator; give --train instead of --model")
    train_config(options)  # bad settings fail before any work


def _load_model(model, folds: list[Fold], pairs, device: str):
    from diffgap_search.diffusion.translator import Translator

    translator = Translator.load(model, device)
    a, b = translator.config.space_a, translator.config.space_b
    test = folds[0].test
    if (test.dim_a, test.dim_b) != (a.dim, b.dim):
        raise DiffgapError(f"{pairs}: pairs have dims a={test.dim_a}, b={test.dim_b}, the model {model} expects "
                           f"a={a.dim}, b={b.dim}; benchmark it on pairs of the spaces it was trained on")
    return translator


def run_benchmark(pairs: str | Path, out: str | Path, *, train: str | Path | None = None, model: str | Path | None = None,
                  options: BenchmarkOptions = BenchmarkOptions(), command: str = "", log=lambda s: None) -> dict:
    """Evaluate, write `out`.md / .json / -r1.png (and -steps.png), return the record."""
    from tqdm.auto import tqdm

    from diffgap_search.machine import machine

    t_start, load_start = time.perf_counter(), _load_average()
    out = Path(out)
    _check_request(options, train, model)
    folds = benchmark_folds(pairs, train, options.kfold, options.seed)
    trainable = folds[0].train is not None
    if options.ablate and not (trainable or model is not None):
        raise DiffgapError("--ablate needs a translator: give --train TRAIN.parquet (or --kfold K) or --model DIR")
    translator = _load_model(model, folds, pairs, options.device) if model is not None else None
    methods = choose_methods(options.methods, shares_space(folds[0].test), trainable, model is not None)
    stages = len(methods) + (1 if trainable and any(m in methods for m in DIFFGAP_METHODS) else 0) \
        + sum({"steps": 1, "interval": len(ABLATION_INTERVALS), "components": 4}[a] for a in options.ablate)
    workdir = Path(tempfile.mkdtemp(prefix="diffgap-benchmark-"))
    per_fold, fold_notes, fold_ablations = [], [], []
    try:
        with tqdm(total=stages * len(folds), desc="benchmark", unit="stage", disable=not options.progress) as bar:
            for fold in folds:
                rows, ablations, notes = run_fold(fold, methods, options, workdir, translator, log, bar)
                per_fold.append(rows)
                fold_ablations.append(ablations)
                fold_notes.append(notes)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    record = {
        "command": command,
        "pairs": str(pairs), "train": None if train is None else str(train), "model": None if model is None else str(model),
        "kfold": options.kfold, "seed": options.seed, "methods": methods, "ablate": list(options.ablate),
        "training": train_config(options).to_dict() if trainable else None,
        "steps": options.steps, "candidates": options.candidates,
        "rows": average_rows(per_fold),
        "ablations": {name: average_rows([a[name] for a in fold_ablations]) for name in fold_ablations[0]},
        "folds": fold_notes, "per_fold": per_fold,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    record["machine"] = machine()
    # other processes on the machine slow a run down: the 1-minute load average beside the core count says so
    record["machine"]["load average (1 min) at start / end"] = f"{load_start} / {_load_average()}"
    write_report(record, out)
    return record


def _load_average() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except (OSError, AttributeError):
        return "unknown"
