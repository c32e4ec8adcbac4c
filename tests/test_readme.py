"""The README's quick start is what CI runs, and its first command works."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def quick_start_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_quick_start_has_exactly_two_commands():
    commands = quick_start_commands()
    assert len(commands) == 2, commands
    assert commands[0].startswith("pip install -e . && diffgap-search ")
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    assert quick_start_commands()[1] in ci.splitlines()


def test_quick_start_main_job_runs(tmp_path):
    """Run the first command minus its `pip install` (the package is installed here)."""
    command = quick_start_commands()[0].split(" && ", 1)[1]
    bindir = Path(sys.executable).parent
    result = subprocess.run(
        command, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "SYNTHETIC DATA" in result.stdout
    for row in ("raw cosine", "translated", "translated + rerank", "calibrated fusion"):
        assert row in result.stdout
    assert (tmp_path / "demo" / "results.json").exists()
    assert (tmp_path / "demo" / "index" / "manifest.json").exists()
