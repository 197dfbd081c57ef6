"""The bookkeeping benchmarks still run against today's contract (a fabricated run must pass the records' checks:
``scale.py`` broke silently when run.yaml's plan and the score summary gained required keys), and print their
figure on the last line as ``name=value``."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize(("script", "args", "name"), [
    ("scale.py", ["--classes", "10", "--images", "200", "--factor", "2"], "scale_rss_ratio"),
    ("tar_count.py", ["--samples", "16", "--repeats", "2", "--shards", "10"], "count_check_us_per_shard"),
])
def test_benchmark_runs_and_prints_its_figure(tmp_path: Path, script: str, args: list[str], name: str) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], capture_output=True, text=True,
                          cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(rf"{name}=\d+(\.\d+)?", last), last
