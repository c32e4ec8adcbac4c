"""diffgap-search: audio retrieval over CLAP embeddings with DiffGAP translation.

The public API (imported lazily, so `import diffgap_search` stays cheap):

    from diffgap_search import Engine, Index, Translator, load_encoder

    index = Index.build(vectors, out="indexes/clips")          # or Index.open("indexes/clips")
    engine = Engine(index, Translator.load("models/audiocaps"))  # or Engine.open(INDEX_DIR, model=..., encoder=...)
    results = engine.search(embeddings=queries, k=10)           # texts=, audio=, video= with an encoder
    results.ids, results.scores, results.signals, results.rows(0), results.to_arrow()
"""

__version__ = "0.2.0"

_EXPORTS = {
    "Index": "diffgap_search.index",
    "Engine": "diffgap_search.engine",
    "Results": "diffgap_search.engine",
    "Translator": "diffgap_search.diffusion.translator",
    "load_encoder": "diffgap_search.encoders",
    "Queries": "diffgap_search.queries",
    "FusionConfig": "diffgap_search.signals",
    "Direction": "diffgap_search.types",
    "DiffgapError": "diffgap_search.errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'diffgap_search' has no attribute {name!r}")
