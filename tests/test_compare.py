"""`python tune/compare.py` for real: 2 arms x 2 seeds on a real local Ray and a real SQLite MLflow
store, the synthetic set; and the statistics against values computed by hand."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tune.compare_stats import comparison, format_table, paired_difference, spread, t_quantile

ROOT = Path(__file__).resolve().parents[1]
COMPARE = ROOT / "tune" / "compare.py"


def test_statistics_match_hand_computed_values():
    # baseline 0.5, 0.6, 0.7 and arm 0.6, 0.8, 0.7 over seeds 0, 1, 2: differences 0.1, 0.2, 0.0,
    # mean 0.1, sd sqrt((0 + 0.01 + 0.01) / 2) = 0.1, t(0.975, 2) = 4.302653 (tables),
    # half-width 4.302653 * 0.1 / sqrt(3) = 0.248414
    assert t_quantile(0.975, 2) == pytest.approx(4.302653, abs=1e-6)
    assert t_quantile(0.975, 9) == pytest.approx(2.262157, abs=1e-6)
    s = spread([0.6, 0.8, 0.7])
    assert (s.mean, s.std, s.n) == (pytest.approx(0.7), pytest.approx(0.1), 3)
    d = paired_difference({0: 0.6, 1: 0.8, 2: 0.7}, {0: 0.5, 1: 0.6, 2: 0.7})
    assert (d.mean, d.low, d.high, d.n) == (
        pytest.approx(0.1),
        pytest.approx(-0.148414, abs=1e-6),
        pytest.approx(0.348414, abs=1e-6),
        3,
    )
    # paired by seed: a seed only one arm finished is left out of the difference
    d = paired_difference({0: 0.6, 1: 0.8, 3: 0.9}, {0: 0.5, 1: 0.6, 2: 0.7})
    assert d.n == 2 and d.mean == pytest.approx(0.15)  # 0.1, 0.2: sd 0.0707, t(0.975, 1) = 12.7062
    assert d.high - d.mean == pytest.approx(12.706205 * math.sqrt(0.005) / math.sqrt(2), abs=1e-5)
    one = paired_difference({0: 0.6}, {0: 0.5})
    assert one.n == 1 and math.isnan(one.low) and math.isnan(spread([0.5]).std)

    rows = [
        {"arm": arm, "seed": seed, "best_val_clip_accuracy": v, "val_clip_accuracy": v - 0.1, "test_clip_accuracy": v}
        for arm, values in (("a", [0.5, 0.6, 0.7]), ("b", [0.6, 0.8, 0.7]))
        for seed, v in enumerate(values)
    ]
    table = comparison(rows, ["a", "b"], "a")
    assert table[1]["test_clip_accuracy_mean"] == pytest.approx(0.7)
    assert table[1]["test_clip_accuracy_diff_low"] == pytest.approx(-0.148414, abs=1e-6)
    text = format_table(table, "a", 3)
    assert "0.700 ± 0.100" in text and "+0.100 [-0.148, +0.348]" in text


def tiny(tmp_path: Path) -> list[str]:
    return [
        "data=synthetic",
        "data.sample_rate=8000",
        "data.clip_seconds=2.0",
        "data.synthetic_clips_per_class=4",
        "data.parts=2",
        "data.crops_per_clip=1",
        "data.batch_size=8",
        "data.time_mask_frames=2",
        "data.freq_mask_bins=4",
        f"data.cache_dir={tmp_path}/cache",
        "stft.n_fft=256",
        "stft.hop_length=128",
        "stft.n_mels=32",
        "optim.lr=0.001",
        "train.epochs=2",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
        "tracking.experiment=compare-test",
    ]


def run_compare(tmp_path: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(COMPARE), *args], cwd=tmp_path, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_two_arms_two_seeds_end_to_end(tmp_path):
    proc = run_compare(tmp_path, "stft=fixed,learn_both", "--seeds", "2", "--name", "fronts", *tiny(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "comparison 'fronts': 2 arms x 2 seeds = 4 trials" in proc.stdout

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("compare-test")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and parent.data.tags["kind"] == "compare"
    assert sorted((r.data.tags["arm"], r.data.tags["seed"]) for r in children) == [
        ("stft=fixed", "0"),
        ("stft=fixed", "1"),
        ("stft=learn_both", "0"),
        ("stft=learn_both", "1"),
    ]
    assert all(r.info.status == "FINISHED" for r in children)
    learned = {r.data.tags["arm"]: r.data.params["stft.learn_window"] for r in children}
    assert learned == {"stft=fixed": "False", "stft=learn_both": "True"}
    assert {r.data.params["train.seed"] for r in children} == {"0", "1"}

    # the table's numbers, computed by hand from what each child run logged
    def final(run, key):
        return max(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step).value

    values = {
        (r.data.tags["arm"], int(r.data.tags["seed"])): {
            "best": final(r, "best_val_clip_accuracy"),
            "test": final(r, "test_clip_accuracy"),
            "last": [
                m.value
                for m in sorted(client.get_metric_history(r.info.run_id, "val_clip_accuracy"), key=lambda m: m.step)
            ][-1],
        }
        for r in children
    }
    lines = proc.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("2 arms x 2 seeds"))
    for arm in ("stft=fixed", "stft=learn_both"):
        (row,) = [line for line in lines[start : start + 4] if line.startswith(arm + " ")]
        for key in ("best", "last", "test"):
            a, b = values[(arm, 0)][key], values[(arm, 1)][key]
            assert f"{(a + b) / 2:.3f} ± {abs(a - b) / math.sqrt(2):.3f}" in row, (arm, key, row)
    (diff_row,) = [line for line in lines[start + 4 :] if line.startswith("stft=learn_both ")]
    d = [values[("stft=learn_both", s)]["test"] - values[("stft=fixed", s)]["test"] for s in (0, 1)]
    mean, half = sum(d) / 2, 12.706205 * abs(d[0] - d[1]) / math.sqrt(2) / math.sqrt(2)
    assert f"{mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}]" in diff_row, diff_row

    files = {a.path for a in client.list_artifacts(parent.info.run_id, "compare")}
    assert {"compare/comparison.txt", "compare/comparison.png", "compare/trials.json"} <= files


def test_bad_input_is_one_line_before_ray_starts(tmp_path):
    cases = [
        (
            ["stft=fixed,nope"],
            "compare: error: arm 'stft=nope': stft=nope is not an option of stft (available: fixed, "
            "learn_both, learn_kernel, learn_window, pcen)",
        ),
        (["--seeds", "0", "stft=fixed,learn_both"], "--seeds must be >= 1, got 0"),
        (
            ["--baseline", "learn_kernel", "stft=fixed,learn_both"],
            "compare: error: --baseline 'learn_kernel' is not an arm: give one of 'stft=fixed', 'stft=learn_both'",
        ),
        (
            ["experiment=glob(nothing_*)"],
            "compare: error: 'experiment=glob(nothing_*)' matches no option of adastft/configs/experiment/",
        ),
        (["stft=fixed,learn_both", "train.seed=3"], "--seeds sets train.seed"),
    ]
    for args, message in cases:
        started = time.monotonic()
        proc = run_compare(tmp_path, *args, f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", timeout=120)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr.strip().splitlines()[-1], (args, proc.stderr)
        assert time.monotonic() - started < 60
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_ctrl_c_stops_the_comparison_with_its_resume_command(tmp_path):
    # 1000 epochs: by construction still training when the signal comes, once both trials logged one
    args = [
        "stft=fixed,learn_window",
        "--seeds",
        "1",
        "--name",
        "cc",
        *tiny(tmp_path)[:-3],
        "train.epochs=1000",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
        "tracking.experiment=compare-test",
    ]
    proc = subprocess.Popen(
        [sys.executable, str(COMPARE), *args],
        cwd=tmp_path,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")

    def both_training() -> bool:
        experiment = client.get_experiment_by_name("compare-test") if (tmp_path / "mlflow.db").exists() else None
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        return len(children) == 2 and all(client.get_metric_history(r.info.run_id, "val_loss") for r in children)

    try:
        deadline = time.monotonic() + 300
        while not both_training():
            assert proc.poll() is None and time.monotonic() < deadline, "the comparison never got to training"
            time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the whole process group
        sent = time.monotonic()
        out, err = proc.communicate(timeout=120)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 130 and time.monotonic() - sent < 30, (proc.returncode, err[-2000:])
    lines = [line for line in err.splitlines() if line.startswith("compare: interrupted")]
    assert len(lines) == 1, err[-2000:]
    assert lines[0].startswith(
        "compare: interrupted (SIGINT): comparison 'cc' stopped before it finished; continue "
        f"it with: python {COMPARE} stft=fixed,learn_window --seeds 1 --name cc"
    ), lines[0]
    assert lines[0].endswith(" --resume") and "paired difference" not in out
    runs = client.search_runs([client.get_experiment_by_name("compare-test").experiment_id])
    assert sorted(r.info.status for r in runs) == ["KILLED", "KILLED", "KILLED"]
    assert all("continue with python" in r.data.tags["stopped"] for r in runs)


def test_named_arms_take_several_overrides_each_and_refuse_sweeps():
    from tune.arms import compose_arm, named_arms
    from tune.settings import SearchError

    arms = named_arms(["slow:stft=learn_both stft.lr=1e-4", "fixed:stft=fixed"], ["train.epochs=2"])
    assert [(a.name, a.overrides) for a in arms] == [
        ("slow", ("train.epochs=2", "stft=learn_both", "stft.lr=1e-4")),
        ("fixed", ("train.epochs=2", "stft=fixed")),
    ]
    cfg = compose_arm(arms[0])
    assert (cfg.stft.learn_kernel, cfg.stft.lr, cfg.train.epochs) == (True, 1e-4, 2)
    for specs, common, message in [
        (["no colon"], [], "--arm 'no colon': give NAME:OVERRIDES"),
        (["a:stft=fixed", "a:stft=learn_both"], [], "two --arm flags have the same name"),
        (["a:stft=fixed"], ["model=resnet18,resnet34"], "'model=resnet18,resnet34': with --arm the other overrides"),
    ]:
        with pytest.raises(SearchError, match=message):
            named_arms(specs, common)
    # a dict value's commas are not a sweep
    assert named_arms(["a:stft=fixed"], ["data.split_files={train:a.txt,val:b.txt}"])[0].name == "a"
