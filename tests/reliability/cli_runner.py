"""Run many command lines of this project, each in a process of its own, paying the interpreter's
start and the imports of torch, Hydra and MLflow once instead of once per command.

Run: ``python tests/reliability/cli_runner.py JOBS.json RESULTS.json``. ``JOBS.json`` is a list of
``{"argv": [...], "cwd": ..., "stdout": path, "stderr": path}`` where ``argv[0]`` is ``-m MODULE``
or a script path, as after ``python``. Each job is a child forked from this process after the
imports: it changes to ``cwd``, sends its output to the two files, runs the module or script as
``__main__`` (``runpy``, exactly as ``python -m``/``python script`` would) and exits with its exit
status, which is reported with the job's wall time. At most two jobs run at once.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _child(job: dict) -> None:
    os.chdir(job["cwd"])
    for fd, path in ((1, job["stdout"]), (2, job["stderr"])):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    argv = job["argv"]
    code = 0
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(argv)
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - what the interpreter would do: traceback, status 1
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(jobs_file: str, results_file: str) -> None:
    sys.path.insert(0, str(REPO))
    import adastft.predict  # noqa: F401 - the imports every job would otherwise pay for
    import adastft.train  # noqa: F401
    import adastft.training  # noqa: F401
    import hydra  # noqa: F401
    import mlflow.tracking  # noqa: F401
    import tune.cluster_checks  # noqa: F401
    import tune.settings  # noqa: F401
    import tune.store_checks  # noqa: F401

    jobs = json.loads(Path(jobs_file).read_text())
    results: list[dict | None] = [None] * len(jobs)
    running: dict[int, tuple[int, float]] = {}
    queue = list(range(len(jobs)))
    while queue or running:
        while queue and len(running) < 2:
            i = queue.pop(0)
            pid = os.fork()
            if pid == 0:
                _child(jobs[i])
            running[pid] = (i, time.monotonic())
        pid, status = os.wait()
        i, started = running.pop(pid)
        results[i] = {"returncode": os.waitstatus_to_exitcode(status), "seconds": time.monotonic() - started}
    Path(results_file).write_text(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
