"""Retrieval benchmark: every method side by side, both directions, and the paper's ablations.

`run_benchmark` is what `diffgap-search benchmark` calls (run.py). Methods (a method's
query->audio score is cos(f(query), clip), its audio->query score cos(g(clip), query) with
g the reverse mapper; where a method has no reverse, the query->audio scores transposed):

  raw         cosine of the raw vectors (only when both sides are one space)
  mean-shift  b - mean(b) + mean(a) (one dim only)
  ridge       closed-form ridge regression
  mlp         MLP regression mapper (V2A-Mapper's "regression" variant, cosine loss)
  infonce     the same MLP trained with the symmetric contrastive loss
  diffgap     the DiffGAP translation (S DDIM steps, K samples, guidance w)
  rerank      the engine's chain: diffgap's top-N re-scored with the diffusion score of the
              other direction (z-scored, translated 1 / diffusion 0.5)
  fusion      the engine's chain with the settings `calibrate` chose on the validation split
              (both directions), or those stored beside a given --model

Ranks follow `metrics`: ties count against the query; for rerank and fusion the candidates
come first in fused order, then every other item in translated-cosine order.
"""

from diffgap_search.benchmark.data import METHODS, pairs_from_arrays, read_benchmark_pairs
from diffgap_search.benchmark.report import DIRECTIONS, report_tables, write_report
from diffgap_search.benchmark.run import ABLATIONS, DEFAULT_TRAINING, BenchmarkOptions, run_benchmark, run_fold

__all__ = ["ABLATIONS", "DEFAULT_TRAINING", "DIRECTIONS", "METHODS", "BenchmarkOptions", "pairs_from_arrays",
           "read_benchmark_pairs", "report_tables", "run_benchmark", "run_fold", "write_report"]
