"""The package as a user installs it: ``pip install <checkout>`` (a wheel, no ``-e``), then the
console scripts from a folder that is not the checkout. Catches configs that live outside the
package, a module missing from the wheel, and a command line that only works from a checkout.

The wheel goes into a fresh virtual environment that sees this machine's site-packages (torch and
the other dependencies are not installed twice) but not the checkout: ``PYTHONPATH`` is cleared,
and the environment's own site-packages comes before the editable install's finder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

from process_helpers import checkout_copy

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A virtual environment with the wheel of this checkout installed; returns its bin folder."""
    if shutil.which("git") is None:
        pytest.skip("needs git to list the checkout's files: apt-get install git")
    root = tmp_path_factory.mktemp("wheel")
    src = checkout_copy(root / "src")  # pip builds in it: not in the checkout under test
    env_dir = root / "venv"
    # without pip: the machine's pip (seen through system site-packages) installs into it
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", str(src)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return env_dir / "bin"


def _run(bin_dir: Path, cwd: Path, *argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_wheel_holds_the_configs_and_imports_from_its_own_folder(installed, tmp_path):
    proc = _run(
        installed,
        tmp_path,
        str(installed / "python"),
        "-c",
        "import adastft, tune, adastft.train as t; print(adastft.__file__); print(tune.__file__); "
        "print(t.CONFIG_DIR); print(sorted(p.name for p in t.CONFIG_DIR.iterdir()))",
    )
    assert proc.returncode == 0, proc.stderr
    lib, tune_file, configs, groups = proc.stdout.splitlines()
    site = str(installed.parent / "lib")
    assert lib.startswith(site) and tune_file.startswith(site) and configs.startswith(site), proc.stdout
    assert not lib.startswith(str(REPO))
    for group in ("data", "experiment", "model", "optim", "scheduler", "search", "stft", "tracking", "train"):
        assert f"'{group}'" in groups
    assert "'config.yaml'" in groups


@pytest.mark.slow
def test_console_scripts_work_from_any_folder(installed, tmp_path):
    for script, expected in (
        ("adastft-train", "experiment: "),
        ("adastft-search", "usage: adastft-search"),
        ("adastft-compare", "usage: adastft-compare"),
        ("adastft-predict", "usage: adastft-predict"),
        ("adastft-demo", "usage: adastft-demo"),
    ):
        proc = _run(installed, tmp_path, str(installed / script), "--help", timeout=300)
        assert proc.returncode == 0, (script, proc.stderr[-2000:])
        assert expected in proc.stdout, (script, proc.stdout[:2000])
    # the groups and options come from the installed configs
    assert "quickstart" in _run(installed, tmp_path, str(installed / "adastft-train"), "--help").stdout

    # a bad override is one line before anything is written, as from a checkout
    bad = _run(installed, tmp_path, str(installed / "adastft-train"), "stft=learn_bot")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert "learn_both" in bad.stderr
    assert not (tmp_path / "runs").exists()

    # one real epoch of the quickstart experiment, made small (3 s clips, 3 per class)
    proc = _run(
        installed,
        tmp_path,
        str(installed / "adastft-train"),
        "experiment=quickstart",
        "train.epochs=1",
        "data.synthetic_clips_per_class=3",
        "data.clip_seconds=3",
        "data.cache_dir=cache",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "runs" / "quickstart" / "best.pt").is_file(), sorted(str(p) for p in tmp_path.rglob("*.pt"))
    assert (tmp_path / "mlflow.db").is_file()
