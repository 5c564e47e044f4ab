"""What a study leaves in storage: bytes sent per trial-epoch and the final footprint, side by side
for ``--keep-checkpoints all`` (every trial keeps its best and latest checkpoint, as before study-wide
retention) and the default (the best 3 trials keep their best epoch's checkpoint; stopped trials give
theirs up).

Run: ``python bench/bench_storage.py [--trials 16] [--epochs 4]`` (about 10 minutes on 2 CPU cores).

Each run is a real ``tune/search.py`` study: ASHA (grace 1, reduction 4), the default model
(ResNet-18, one AdaSTFT front end, AdamW) on the synthetic set (``experiment=quickstart``), results
in a local ``--storage`` and MLflow in a local SQLite store with its artifacts beside it.

- *sent per trial-epoch*: the bytes of the checkpoint folder each epoch hands Tune to copy into
  storage (``checkpoint_bytes`` in every result Tune recorded), in units of one full-state
  checkpoint (one ``last.pt``: model, optimiser, scheduler) and in MB.
- *footprint*: everything under ``--storage`` and MLflow's artifact folder when the study has ended,
  in the same units.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def folder_bytes(path: Path, pattern: str = "*") -> int:
    return sum(f.stat().st_size for f in path.rglob(pattern) if f.is_file()) if path.exists() else 0


def run(tmp: Path, keep: str, trials: int, epochs: int) -> dict:
    tmp.mkdir(parents=True)
    cmd = [
        sys.executable,
        str(ROOT / "tune" / "search.py"),
        "--trials",
        str(trials),
        "--search",
        "quickstart",
        "--keep-checkpoints",
        keep,
        "--name",
        "bench",
        "--storage",
        str(tmp / "runs"),
        "experiment=quickstart",
        f"train.epochs={epochs}",
        f"data.cache_dir={ROOT / '.cache' / 'adastft'}",
        f"tracking.uri=sqlite:///{tmp}/mlflow.db",
        "tracking.experiment=bench-storage",
    ]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"the study with --keep-checkpoints {keep} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    sent = [
        json.loads(line)["checkpoint_bytes"]
        for f in (tmp / "runs" / "bench").glob("*/result.json")
        for line in f.read_text().splitlines()
        if line.strip()
    ]
    return {
        "keep": keep,
        "epochs": len(sent),
        "sent": sum(sent),
        "largest": max(sent),
        "storage": folder_bytes(tmp / "runs"),
        "checkpoints": folder_bytes(tmp / "runs", "last.pt"),
        "mlflow": folder_bytes(tmp / "mlartifacts"),
        "minutes": (time.monotonic() - started) / 60,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp:
        rows = []
        for keep in ("all", "3"):
            print(f"study: {args.trials} trials, ASHA, --keep-checkpoints {keep} ...", flush=True)
            rows.append(run(Path(tmp) / f"keep-{keep}", keep, args.trials, args.epochs))
    unit = max(r["largest"] for r in rows)  # one full-state checkpoint (an AdamW trial's last.pt + epoch.json)
    print(
        f"\n{args.trials}-trial ASHA study of the default model, {args.epochs} epochs at most; "
        f"1 full-state checkpoint = {unit / 1e6:.1f} MB"
    )
    print(
        f"{'--keep-checkpoints':>20} {'trial-epochs':>13} {'sent/trial-epoch':>17} {'footprint':>10} "
        f"{'(storage':>9} {'+ MLflow)':>9} {'minutes':>8}"
    )
    for r in rows:
        print(
            f"{r['keep']:>20} {r['epochs']:>13} {r['sent'] / r['epochs'] / unit:>10.3f} ckpt "
            f"{(r['storage'] + r['mlflow']) / unit:>6.2f} ckpt {r['storage'] / unit:>8.2f} {r['mlflow'] / unit:>9.2f} "
            f"{r['minutes']:>8.1f}"
        )
    print(
        f"  sent per trial-epoch, largest: {max(r['largest'] for r in rows) / unit:.3f} full-state checkpoints "
        "(target <= 1.05)"
    )
    print(
        f"  footprint, default vs all: {(rows[1]['storage'] + rows[1]['mlflow']) / (rows[0]['storage'] + rows[0]['mlflow']):.3f}"
    )


if __name__ == "__main__":
    main()
