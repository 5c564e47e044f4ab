"""Front ends and recipes compared on real music: the dev set, split by piece, arms x seeds.

Run: ``python bench/realaudio.py DEV_DIR [--arms NAME ...] [--seeds 3] [--epochs 12] [--out runs/realaudio]``

``DEV_DIR`` is the folder ``../shared/realaudio/make_dev_set.py DEV_DIR`` renders (300 clips of 30 s,
five styles; needs Debian's ``fluidsynth fluid-soundfont-gm`` and pip's ``music21 pretty-midi
soundfile``; about 2-5 minutes on 2 cores). The audio stays out of the repository.

1. A piece-grouped, class-stratified split (``--split-seed``): every clip of one piece
   (``manifest.csv``'s ``piece_source``) lands in one split, 70/20/10 of each class's pieces, written
   as ``OUT/split_{train,val,test}.txt`` for ``data.split_files``.
2. The linear baseline on that split: log-mel (n_fft 1024, hop 512, 128 mels, log1p) mean and std per
   band over the whole clip, standardised, into a logistic regression (scikit-learn; C chosen by
   5-fold cross-validation on train, grouped by piece, so that val is as unseen as for the CNN).
3. ``tune/compare.py`` over the chosen arms (``ARMS`` below; ``--arms`` picks some, ``--extra``
   adds overrides to all), ``--seeds`` seeds each, ``--epochs`` epochs, the first arm the baseline
   of the paired differences. It prints mean ± std of best and final validation clip accuracy and
   of test accuracy, and each arm's paired difference to the first with a 95% interval; this
   script saves that table as ``OUT/table_<name>.txt`` and appends it to ``OUT/log.txt``.
"""

from __future__ import annotations

import argparse
import csv
import random
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Every arm is a list of Hydra overrides on top of the common ones (data=folder on the dev set).
ARMS: dict[str, list[str]] = {
    "fixed": ["stft=fixed"],
    # the window and kernel at the back end's rate (optim.lr 4.2e-3; stft.lr's default was that)
    "learn_window": ["stft=learn_window", "stft.lr=null"],
    "learn_kernel": ["stft=learn_kernel", "stft.lr=null"],
    "learn_both": ["stft=learn_both", "stft.lr=null"],
    # at a fortieth of it (stft.lr=1e-4, now the default; PCEN and the window length take optim.lr)
    "learn_window_slow": ["stft=learn_window", "stft.lr=1e-4"],
    "learn_kernel_slow": ["stft=learn_kernel", "stft.lr=1e-4"],
    "learn_both_slow": ["stft=learn_both", "stft.lr=1e-4"],
    "win_length": ["stft=fixed", "stft.learn_win_length=true"],
    "learn_all_slow": ["stft=learn_both", "stft.lr=1e-4", "stft.learn_win_length=true"],
    "pcen": ["stft=pcen"],
    "pcen_learn_both_slow": ["stft=pcen", "stft.learn_window=true", "stft.learn_kernel=true", "stft.lr=1e-4"],
    "mixup": ["stft=fixed", "data.mixup_alpha=0.2"],
    "no_specaugment": ["stft=fixed", "data.time_masks=0", "data.freq_masks=0"],
    "fixed_lr1e-3": ["stft=fixed", "optim.lr=1e-3"],
    "learn_both_slow_lr1e-3": ["stft=learn_both", "stft.lr=1e-4", "optim.lr=1e-3"],
    "cnn4_fixed": ["stft=fixed", "model=cnn4"],
    "cnn4_learn_both_slow": ["stft=learn_both", "stft.lr=1e-4", "model=cnn4"],
    "cnn4_pcen": ["stft=pcen", "model=cnn4"],
    # the best trial of the 16-trial search of the default space (docs/results.md), to confirm over seeds
    "search16_best": [
        "stft=pcen",
        "stft.learn_compression=true",
        "stft.learn_window=true",
        "stft.learn_kernel=true",
        "stft.lr=1.0970213817508292e-05",
        "stft.hop_length=256",
        "stft.n_mels=96",
        "optim.lr=0.0028976166292595954",
        "data.mixup_alpha=0.2",
        "data.time_masks=3",
        "data.freq_masks=2",
    ],
}


def piece_split(dev_dir: Path, seed: int, fractions=(0.7, 0.2, 0.1)) -> dict[str, list[str]]:
    """``{"train": [...], "val": [...], "test": [...]}`` of clip paths (relative to the class
    folder's parent), every piece in one split, each class's pieces divided by ``fractions``."""
    pieces: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    with open(dev_dir / "manifest.csv", newline="") as f:
        for row in csv.DictReader(f):
            name = str(Path(row["path"]).relative_to("genres_original"))
            pieces[row["label"]][row["piece_source"]].append(name)
    rng = random.Random(seed)
    split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for label in sorted(pieces):
        order = sorted(pieces[label])
        rng.shuffle(order)
        clips = sum(len(pieces[label][p]) for p in order)
        # fill test, then val, to their share of clips; the rest is train
        targets = {"test": fractions[2] * clips, "val": fractions[1] * clips}
        taken = {"test": 0, "val": 0}
        for piece in order:
            names = pieces[label][piece]
            dest = next((s for s in ("test", "val") if taken[s] + len(names) / 2 <= targets[s]), "train")
            if dest != "train":
                taken[dest] += len(names)
            split[dest].extend(names)
    return split


def write_split(split: dict[str, list[str]], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, clips in split.items():
        paths[name] = out / f"split_{name}.txt"
        paths[name].write_text("\n".join(sorted(clips)) + "\n")
    return paths


def linear_baseline(dev_dir: Path, split: dict[str, list[str]]) -> dict[str, float]:
    """Log-mel mean and std per band -> standardised -> logistic regression; val and test clip accuracy."""
    import numpy as np
    import soundfile as sf
    import torch
    import torchaudio
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    with open(dev_dir / "manifest.csv", newline="") as f:
        groups = {str(Path(r["path"]).relative_to("genres_original")): r["piece_source"] for r in csv.DictReader(f)}

    mel = torchaudio.transforms.MelSpectrogram(22050, n_fft=1024, hop_length=512, n_mels=128)

    def features(names):
        rows, labels = [], []
        for name in names:
            audio, _ = sf.read(dev_dir / "genres_original" / name, dtype="float32")
            spec = torch.log1p(10 * mel(torch.from_numpy(audio))) / np.log(10)  # (M, T)
            rows.append(torch.cat([spec.mean(1), spec.std(1)]).numpy())
            labels.append(Path(name).parts[0])
        return np.stack(rows), np.array(labels)

    data = {s: features(names) for s, names in split.items()}
    x_train, y_train = data["train"]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    search = GridSearchCV(model, {"logisticregression__C": [0.01, 0.03, 0.1, 0.3, 1.0, 3.0]}, cv=GroupKFold(5)).fit(
        x_train, y_train, groups=[groups[n] for n in split["train"]]
    )
    val, test = (float((search.predict(data[s][0]) == data[s][1]).mean()) for s in ("val", "test"))
    return {"val": val, "test": test, "C": search.best_params_["logisticregression__C"]}


def export_figures(tracking_uri: str, study: str, dest: Path) -> list[Path]:
    """For each arm of comparison ``study``: the plots of its trial with the best final validation
    accuracy (window, kernel change, confusion matrices, curves), copied to ``dest/<arm>_<plot>.png``."""
    import shutil
    import tempfile

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], filter_string=f"tags.study = '{study}'"
    )
    best: dict[str, object] = {}
    for run in runs:
        arm = run.data.tags.get("arm")
        if (
            arm
            and run.info.status == "FINISHED"
            and (
                arm not in best
                or run.data.metrics.get("val_clip_accuracy", 0) > best[arm].data.metrics.get("val_clip_accuracy", 0)
            )
        ):
            best[arm] = run
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        for arm, run in sorted(best.items()):
            local = Path(client.download_artifacts(run.info.run_id, "plots", tmp))
            for png in sorted(local.glob("*.png")):
                target = dest / f"{arm}_{png.name}"
                shutil.copyfile(png, target)
                written.append(target)
            shutil.rmtree(local)
    return written


def collect_table(tracking_uri: str, arms: list[str], epochs: int, baseline: str = "fixed") -> str:
    """The table over every finished trial in the store of the given arms and epoch count, whichever
    comparison ran it (seeds pair by ``train.seed``): screening runs count towards the confirmation."""
    import math

    from mlflow.tracking import MlflowClient

    from tune.compare_stats import METRICS, comparison, format_table

    client = MlflowClient(tracking_uri)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string="attributes.status = 'FINISHED'",
        max_results=5000,
    )
    rows, seen = [], set()
    for run in runs:
        arm, seed = run.data.tags.get("arm"), run.data.tags.get("seed")
        if arm not in arms or seed is None or run.data.params.get("train.epochs") != str(epochs):
            continue
        if (arm, seed) in seen:  # the same arm and seed run twice: keep the first found
            continue
        seen.add((arm, seed))
        rows.append({"arm": arm, "seed": int(seed), **{m: run.data.metrics.get(m, math.nan) for m, _ in METRICS}})
    present = [a for a in arms if any(r["arm"] == a for r in rows)]
    if baseline not in present:
        return f"no finished {epochs}-epoch trial of the baseline {baseline!r} in {tracking_uri}"
    ordered = [baseline, *[a for a in present if a != baseline]]
    seeds = sorted({r["seed"] for r in rows})
    return format_table(comparison(rows, ordered, baseline), baseline, len(seeds), seeds[0])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dev_dir", type=Path, help="the folder make_dev_set.py rendered (with manifest.csv)")
    p.add_argument(
        "--arms",
        nargs="+",
        default=["fixed", "learn_both"],
        choices=sorted(ARMS),
        help="arms to compare, the first the baseline of the paired differences",
    )
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0, help="train.seed of the first seed (to add seeds later)")
    p.add_argument(
        "--table-only",
        action="store_true",
        help="run nothing: print the table of every finished trial of --arms at --epochs in OUT's store "
        "(the first arm the baseline of the paired differences)",
    )
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/realaudio"))
    p.add_argument("--name", default=None, help="the comparison's name (default: the arms joined)")
    p.add_argument("--extra", nargs="*", default=[], help="Hydra overrides for every arm")
    p.add_argument("--no-baseline", action="store_true", help="skip the logistic regression")
    p.add_argument("--concurrent", type=int, default=2, help="trials at once (one CPU each)")
    p.add_argument(
        "--figures",
        type=Path,
        default=None,
        help="copy each arm's best trial's plots here (e.g. docs/results) after the comparison",
    )
    args = p.parse_args()

    manifest = args.dev_dir / "manifest.csv"
    if not manifest.is_file():
        p.error(f"{manifest} is missing: render the set with python ../shared/realaudio/make_dev_set.py {args.dev_dir}")
    out = args.out.resolve()
    if args.table_only:
        print(collect_table(f"sqlite:///{out / 'mlflow.db'}", args.arms, args.epochs, baseline=args.arms[0]))
        return 0
    split = piece_split(args.dev_dir, args.split_seed)
    paths = write_split(split, out)
    log = out / "log.txt"
    sizes = " / ".join(f"{k} {len(v)}" for k, v in split.items())
    print(f"piece-grouped split (seed {args.split_seed}): {sizes} clips", flush=True)
    if not args.no_baseline:
        base = linear_baseline(args.dev_dir, split)
        line = (
            f"linear baseline (log-mel mean+std, logistic regression C={base['C']}): "
            f"val {base['val']:.3f}  test {base['test']:.3f}"
        )
        print(line, flush=True)
        with open(log, "a") as f:
            f.write(line + "\n")

    name = args.name or "-".join(args.arms)
    common = [
        "data=folder",
        f"data.root={args.dev_dir.resolve() / 'genres_original'}",
        f"data.cache_dir={out / 'cache'}",
        f"data.split_files={{train:{paths['train']},val:{paths['val']},test:{paths['test']}}}",
        f"train.epochs={args.epochs}",
        "train.threads=1",
        "data.num_workers=0",
        f"tracking.uri=sqlite:///{out / 'mlflow.db'}",
        "tracking.system_metrics_interval=0",
        *args.extra,
    ]
    cmd = [
        sys.executable,
        str(ROOT / "tune" / "compare.py"),
        "--seeds",
        str(args.seeds),
        "--first-seed",
        str(args.first_seed),
        "--name",
        name,
        "--storage",
        str(out / "studies"),
        "--max-concurrent",
        str(args.concurrent),
        "--max-failures",
        "0",
        *[f"--arm={arm}:{' '.join(ARMS[arm])}" for arm in args.arms],
        *common,
    ]
    print("$ " + " ".join(cmd), flush=True)
    started = time.time()
    lines = []
    with subprocess.Popen(cmd, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        for line in proc.stdout:  # the comparison's progress as it goes
            lines.append(line)
            print(line, end="", flush=True)
    table = "".join(lines)
    table = table[table.rfind("\ncomparison ") :] if "\ncomparison " in table else table
    (out / f"table_{name}.txt").write_text(table)
    with open(log, "a") as f:
        f.write(
            f"\n## {name} ({args.seeds} seeds, {args.epochs} epochs, {time.time() - started:.0f} s, "
            f"rc {proc.returncode})\n{table[-6000:]}\n"
        )
    table = collect_table(f"sqlite:///{out / 'mlflow.db'}", list(ARMS), args.epochs)
    print(f"\nevery finished {args.epochs}-epoch trial in the store:\n{table}", flush=True)
    with open(log, "a") as f:
        f.write(f"\n## every finished {args.epochs}-epoch trial\n{table}\n")
    if args.figures is not None and proc.returncode == 0:
        for path in export_figures(f"sqlite:///{out / 'mlflow.db'}", name, args.figures):
            print(f"figure: {path}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
