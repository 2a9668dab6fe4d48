"""bench/progress.py end to end, briefly: its own redis-server, artgen's API and the anchor, driven by wrk."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_progress_bench_compares_artgen_with_the_anchor_in_one_run() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "bench/progress.py",
            "--rounds",
            "1",
            "--duration",
            "1",
            "--connections",
            "4",
            "--json",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    ).stdout
    report = json.loads(out)
    rows = report["rows"]
    assert set(rows) == {
        "artgen GET /v1/jobs/{id}",
        "anchor GET (one HGETALL)",
        "artgen GET /v1/jobs/{id}/frame (304)",
    }
    for name, row in rows.items():
        # Every answer was a 2xx or 3xx: the 304s of /frame count as answered, errors would not.
        assert row["requests_per_s"] > 0 and row["non_2xx"] == 0, name
        assert 0 < row["p50_ms"] <= row["p99_ms"], name
    assert rows["anchor GET (one HGETALL)"]["rps_ratio"] == 1.0
    assert len(report["runs"]["artgen GET /v1/jobs/{id}"]) == 1
