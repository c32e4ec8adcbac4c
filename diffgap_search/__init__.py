"""diffgap-search: audio retrieval over CLAP embeddings with DiffGAP translation."""

__version__ = "0.1.0"
