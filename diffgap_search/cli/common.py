"""What every command shares: one-line errors, JSON lines, the text table, the --device choice."""

from __future__ import annotations

import functools
import json
import shlex
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup

from diffgap_search.errors import DiffgapError

try:  # typer >= 0.29 carries its own copy of click
    from typer._click.exceptions import ClickException, UsageError
except ImportError:  # pragma: no cover - older typer on click
    from click.exceptions import ClickException, UsageError


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def user_errors(fn):
    """Turn DiffgapError (and Ctrl-C) into one line on stderr and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DiffgapError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted; nothing was changed", err=True)
            raise typer.Exit(130) from None
        except MemoryError:
            typer.echo("error: out of memory; lower --memory-budget or index fewer vectors at a time", err=True)
            raise typer.Exit(2) from None

    return wrapper


class OneLineErrorGroup(TyperGroup):
    """The app's command group: a bad option, argument or command is one line `error: ...` on stderr, exit 2.

    Parsing runs in click's non-standalone mode so that its usage errors reach us instead of its
    usage-and-box printout; everything else (--help, typer.Exit codes, Ctrl-C) behaves as standalone.
    """

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode: bool = True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # the bare command: its help, as before
                exc.show()
                sys.exit(2)
            typer.echo(f"error: {usage_message(exc)}", err=True)
            sys.exit(2)
        except ClickException as exc:
            typer.echo(f"error: {one_line(exc.format_message())}", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("aborted", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)  # non-standalone main returns typer.Exit's code


def usage_message(exc: UsageError) -> str:
    """'--k 0: input should be greater than or equal to 1 (see diffgap-search query --help)'."""
    param, value = getattr(exc, "param", None), bad_input(exc)
    if param is not None and value is not None and type(exc).__name__ != "MissingParameter":
        name = param.opts[0] if getattr(param, "param_type_name", "") == "option" else param.name.upper()
        text = f"{name} {shlex.quote(str(value))}: {lower_first(exc.message.removeprefix('Value error, '))}"
    else:
        text = lower_first(exc.format_message())
    if exc.ctx is not None:
        text = f"{text.rstrip('.')} (see {exc.ctx.command_path} --help)"
    return one_line(text)


def bad_input(exc: Exception):
    """The value a parameter refused, when typer's validation kept it (pydantic's error `input`)."""
    errors = getattr(exc.__cause__, "errors", None)
    try:
        return errors()[0]["input"] if callable(errors) else None
    except (IndexError, KeyError, TypeError):
        return None


def lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def one_line(text: str) -> str:
    return " ".join(text.split())


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, default=_json_default) + "\n")


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def format_table(rows: list[dict], columns: list[str]) -> str:
    """Left-aligned text columns; floats with 4 decimals, long values cut in the middle."""
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    text = str(value)
    return text if len(text) <= 60 else text[:24] + "..." + text[-33:]  # both ends: a path keeps its file name


def log_to_stderr(line: str) -> None:
    typer.echo(line, err=True)


def load_translator(model: Path, device: Device):
    from diffgap_search.devices import torch_device
    from diffgap_search.diffusion.translator import Translator

    return Translator.load(model, torch_device(device))


def load_query_encoder(spec: str, checkpoint: Optional[Path], device: Device):
    from diffgap_search.devices import torch_device
    from diffgap_search.encoders import load_encoder

    return load_encoder(spec, device=torch_device(device), checkpoint=checkpoint)
