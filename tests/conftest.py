"""Shared fixtures. Real data lives in ../shared/data beside the repo (CI always has it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from diffgap_search.storage import write_shard

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test when the folder is absent (a user's fresh clone)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (../shared/data beside the repo; CI has it)")
    return path


def assert_one_error_line(result, *fragments: str, name: str = "") -> str:
    """A CliRunner result of a user error: exit 2, one `error: ` line on stderr holding every fragment, no traceback."""
    assert result.exit_code == 2, (name, result.exit_code, result.output, repr(result.exception))
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, (name, err)
    for fragment in fragments:
        assert fragment in err, (name, fragment, err)
    assert "Traceback" not in result.output, name
    assert result.exception is None or isinstance(result.exception, SystemExit), (name, repr(result.exception))
    return err


def unit_rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def shard(tmp_path):
    """A small valid shard: 200 x 32, ids 100.., a path column, space 'test-space'."""
    x = unit_rows(200, 32)
    path = tmp_path / "corpus.parquet"
    write_shard(
        path,
        np.arange(100, 300),
        x,
        pa.table({"path": [f"clips/{i}.wav" for i in range(200)]}),
        space="test-space",
        modality="audio",
    )
    return path, x
