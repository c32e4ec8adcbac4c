"""One CliRunner test per command, the help texts, and bad input: one line, non-zero exit, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from diffgap_search import __version__
from diffgap_search.cli import app
from diffgap_search.storage import write_shard

from conftest import assert_one_error_line, unit_rows

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("command", ["build-index", "add", "info", "query", "calibrate", "synthetic", "demo", "train", "translate",
                                     "embed", "pair", "prepare", "bridge", "generate", "benchmark"])
def test_every_command_has_help_with_an_example(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "Example: diffgap-search " in text and f"diffgap-search {command} " in text.partition("Example:")[2]


def test_build_info_query_add(shard, tmp_path):
    path, xb = shard
    ix = tmp_path / "ix"
    result = invoke("build-index", "--embeddings", path, "--out", ix, "--index-type", "flat")
    assert result.exit_code == 0, result.output
    assert "built" in result.output and "200 vectors" in result.output

    result = invoke("info", ix, "--json")
    facts = json.loads(result.output)
    assert (facts["count"], facts["dim"], facts["space"], facts["index_type"]) == (200, 32, "test-space", "flat")

    queries = tmp_path / "q.parquet"
    write_shard(queries, np.array([7, 8]), xb[[3, 42]], pa.table({"caption": ["first", "second"]}), space="test-space")
    result = invoke("query", ix, "--embeddings-file", queries, "--k", 3)
    assert result.exit_code == 0, result.output
    assert "query 7: first" in result.output and "clips/3.wav" in result.output

    result = invoke("query", ix, "--embeddings-file", queries, "--k", 2, "--json")
    hits = [json.loads(line) for line in result.output.splitlines()]
    assert len(hits) == 4
    assert hits[0]["query"] == 7 and hits[0]["id"] == 103 and hits[0]["rank"] == 1 and hits[0]["path"] == "clips/3.wav"
    assert hits[2]["query"] == 8 and hits[2]["id"] == 142
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-5)

    extra = tmp_path / "extra.npy"
    np.save(extra, unit_rows(5, 32, seed=11))
    result = invoke("add", ix, "--embeddings", extra)
    assert result.exit_code == 0, result.output
    assert "added 5 vectors" in result.output and "205 in all" in result.output
    assert json.loads(invoke("info", ix, "--json").output)["count"] == 205


def _bad_inputs(tmp_path, shard_path):
    """(name, argv) pairs of bad input, each with a good index at tmp_path/'good'."""
    nan = unit_rows(4, 32)
    nan[2] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "zero.npy", np.zeros((3, 32), np.float32))
    np.save(tmp_path / "dim.npy", unit_rows(2, 16))
    (tmp_path / "empty.parquet").write_bytes(b"")
    (tmp_path / "corrupt.parquet").write_bytes(b"PAR1 garbage garbage")
    good = tmp_path / "good"
    return good, [
        ("nan", ["build-index", "--embeddings", tmp_path / "nan.npy", "--out", tmp_path / "x"], "row 2 contains NaN"),
        ("zero", ["build-index", "--embeddings", tmp_path / "zero.npy", "--out", tmp_path / "x"], "row 0 is a zero vector"),
        ("empty", ["build-index", "--embeddings", tmp_path / "empty.parquet", "--out", tmp_path / "x"], "empty file"),
        ("corrupt", ["build-index", "--embeddings", tmp_path / "corrupt.parquet", "--out", tmp_path / "x"], "not a readable parquet"),
        ("missing", ["build-index", "--embeddings", tmp_path / "nope.parquet", "--out", tmp_path / "x"], "no such file"),
        ("budget", ["build-index", "--embeddings", shard_path, "--out", tmp_path / "x", "--memory-budget", "lots"], "not a size"),
        ("dim_query", ["query", good, "--embeddings-file", tmp_path / "dim.npy"], "dim 16, the index"),
        ("dim_add", ["add", good, "--embeddings", tmp_path / "dim.npy"], "embedding dim is 16, expected 32"),
        ("no_index", ["info", tmp_path / "nowhere"], "no such index folder"),
        ("rebuild_bad", ["build-index", "--embeddings", tmp_path / "nan.npy", "--out", good], "row 2 contains NaN"),
    ]


def test_bad_input_gives_one_line_and_exit_2_and_keeps_the_index(shard, tmp_path):
    path, _ = shard
    good, cases = _bad_inputs(tmp_path, path)
    assert invoke("build-index", "--embeddings", path, "--out", good).exit_code == 0
    before = (good / "manifest.json").read_bytes()
    for name, argv, message in cases:
        result = invoke(*argv)
        assert result.exit_code == 2, (name, result.output)
        err = result.stderr.strip()
        assert err.startswith("error: ") and "\n" not in err and message in err, (name, err)
        assert "Traceback" not in result.output
        assert not (tmp_path / "x").exists(), name
    assert (good / "manifest.json").read_bytes() == before


def test_console_script_prints_no_traceback(tmp_path):
    """The installed entry point, in a real process: one line on stderr, exit 2."""
    np.save(tmp_path / "nan.npy", np.full((2, 4), np.nan, np.float32))
    proc = subprocess.run(
        [sys.executable, "-m", "diffgap_search.cli", "build-index", "--embeddings", str(tmp_path / "nan.npy"), "--out", str(tmp_path / "ix")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert "nan.npy: row 0 contains NaN or inf" in proc.stderr


def test_help_shows_the_bracketed_defaults():
    """Plain help: rich markup would take "[calibrated, else 100]" for a tag and drop it."""
    result = invoke("query", "--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "per query [calibrated, else 100]" in text and "[calibrated, else 5]" in text and "[default: 10; x>=1]" in text


def test_version_prints_the_version_and_exits_0():
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.output == f"diffgap-search {__version__}\n"


@pytest.mark.parametrize("args, fragments", [
    (["query", "IX", "--k", "0"], ["--k 0", "greater than or equal to 1", "(see diffgap-search query --help)"]),
    (["query", "IX", "--k", "-1"], ["--k -1", "greater than or equal to 1"]),
    (["query", "IX", "--k", "abc"], ["--k abc", "integer"]),
    (["query", "IX", "--device", "gpu"], ["--device gpu", "'auto', 'cpu', 'cuda'"]),
    (["query", "IX", "--bogus"], ["no such option: --bogus", "(see diffgap-search query --help)"]),
    (["build-index", "--embeddings", "x.npy"], ["missing option", "--out"]),
    (["bogus"], ["no such command 'bogus'", "(see diffgap-search --help)"]),
    (["--bogus"], ["no such option: --bogus"]),
])
def test_bad_options_give_one_line_naming_option_and_value(tmp_path, args, fragments):
    result = invoke(*[tmp_path / "ix" if a == "IX" else a for a in args])
    assert_one_error_line(result, *fragments)
    assert "Usage:" not in result.output and "\u256d" not in result.output  # no usage block, no rich box


def test_console_script_bad_option_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "diffgap_search.cli", "query", str(tmp_path), "--k", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: --k 0: ") and proc.stderr.count("\n") == 1, proc.stderr
