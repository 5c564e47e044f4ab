"""Run the reliability suite and print one line per case and the total.

Run: ``python tests/reliability/summary.py [pytest args ...]`` (e.g. ``-k kill``). Each line is a
case recorded by a test (``faults`` fixture in ``conftest.py``): its faults or bad inputs tried,
how many the system survived (every claim of the test held after it) and how many results were
lost (a checkpoint, a finished trial or a logged metric gone or damaged). The last line is
``N faults tried, N survived, 0 results lost``. Exit status: pytest's, or 1 when anything was
lost or not survived.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="adastft-reliability-") as tmp:
        report = Path(tmp) / "cases.jsonl"
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", str(HERE), "-q", "-p", "no:cacheprovider", *argv],
            cwd=REPO,
            env={**os.environ, "ADASTFT_RELIABILITY_REPORT": str(report)},
        )
        minutes = (time.monotonic() - started) / 60
        cases = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    print()
    print(f"reliability suite: {len(cases)} cases in {minutes:.1f} min (pytest exit status {proc.returncode})")
    width = max((len(c["case"]) for c in cases), default=0)
    for c in cases:
        ok = c["outcome"] == "passed" and c["survived"] == c["tried"] and not c["lost"]
        line = (
            f"{'ok  ' if ok else 'FAIL'} {c['case']:<{width}}  {c['tried']:>3} tried, {c['survived']:>3} survived, "
            f"{c['lost']} lost"
        )
        summary = [n for n in c["notes"] if n.startswith(("writes hit", "detail"))]
        if summary:
            line += "  (" + "; ".join(summary) + ")"
        if c["outcome"] != "passed":
            line += f"  [test {c['outcome']}: {c['test']}]"
        print(line)
    tried = sum(c["tried"] for c in cases)
    survived = sum(c["survived"] for c in cases if c["outcome"] == "passed")
    lost = sum(c["lost"] for c in cases)
    print(f"{tried} faults tried, {survived} survived, {lost} results lost")
    if proc.returncode != 0:
        return proc.returncode
    return 0 if survived == tried and lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
