"""`diffgap-search` command line: each command parses, validates, calls one library function, prints.

Bad input surfaces as one line `error: ...` on stderr and exit code 2, never a traceback: a
DiffgapError through `user_errors`, a bad option value or unknown option through the app's group.
"""

from __future__ import annotations

import typer

from diffgap_search import __version__
from diffgap_search.cli import benchmark, bridge, data, index, search, translator
from diffgap_search.cli.common import OneLineErrorGroup

app = typer.Typer(
    name="diffgap-search",
    cls=OneLineErrorGroup,
    help="Audio retrieval over CLAP embeddings with FAISS, bridged across the modality gap by DiffGAP.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: rich markup would eat the "[default]" notes of the help texts
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"diffgap-search {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
) -> None:
    pass


COMMANDS = {
    "build-index": index.build_index,
    "add": index.add,
    "info": index.info,
    "query": search.query,
    "calibrate": search.calibrate_command,
    "synthetic": data.synthetic,
    "demo": data.demo,
    "train": translator.train_command,
    "translate": translator.translate_command,
    "embed": data.embed_command,
    "pair": data.pair_command,
    "prepare": data.prepare_command,
    "bridge": bridge.bridge_command,
    "generate": bridge.generate_command,
    "benchmark": benchmark.benchmark_command,
}
for _name, _command in COMMANDS.items():
    app.command(_name)(_command)


def main() -> None:  # pragma: no cover - console entry point convenience
    app()


__all__ = ["app", "main"]
