"""Indexes: `Index` (core.py), the index kinds and their tuning (kinds.py), inputs and the id rule (inputs.py)."""

from diffgap_search.index.core import (
    FORMAT_VERSION,
    INDEX_FILE,
    MANIFEST,
    SHARD_DIR,
    Index,
    SearchResult,
    read_manifest,
    resolve_device,
)
from diffgap_search.index.inputs import expand_inputs, read_inputs
from diffgap_search.index.kinds import (
    FLAT_MAX_ROWS,
    INDEX_TYPES,
    KINDS,
    IndexPlan,
    parse_bytes,
    plan_index,
    recall_at_k,
    set_search_params,
    tune_search,
    tuning_queries,
)

EmbeddingIndex = Index  # the first wave's name

__all__ = ["Index", "EmbeddingIndex", "SearchResult", "IndexPlan", "KINDS", "INDEX_TYPES", "FLAT_MAX_ROWS", "FORMAT_VERSION",
           "INDEX_FILE", "MANIFEST", "SHARD_DIR", "expand_inputs", "parse_bytes", "plan_index", "read_inputs",
           "read_manifest", "recall_at_k", "resolve_device", "set_search_params", "tune_search", "tuning_queries"]
