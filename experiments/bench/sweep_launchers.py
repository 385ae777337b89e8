"""Benchmark: one sweep through the joblib launcher (jobs side by side) vs the basic launcher.

Both are real ``python run.py -m`` subprocesses over the same short jobs (default: 4 seeds of
lenet300 on Fashion-MNIST, 1 baseline + 1 retrain epoch), each in its own fresh folder (its
own results store and baseline cache, so nothing is reused). The basic launcher runs the jobs
one after another with all cores each (threads=null); joblib runs ``--workers`` at a time
with cores // workers threads each. Prints both wall times and the ratio (target <= 0.6x
with 2 workers on 2 cores); with ``--repeats`` the two alternate and medians are compared.

    python -m experiments.bench.sweep_launchers
    python -m experiments.bench.sweep_launchers --synthetic --jobs 4 --workers 2
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from experiments.run.sweep import cpu_cores
from experiments.storage.results import read_rows

ROOT = Path(__file__).resolve().parents[2]
FASHION = ["dataset=fashion_mnist", "model=lenet300", "baseline.epochs=1", "strategy.retrain.epochs=1"]
SYNTHETIC = [
    "dataset=synthetic",
    "dataset.n_train=4096",
    "dataset.n_test=1024",
    "model=lenet300",
    "baseline.epochs=1",
    "strategy.retrain.epochs=1",
]
QUIET = ["logger=[csv]", "trainer.enable_progress_bar=false", "measure.latency_repeats=5"]


def sweep(folder: Path, jobs: int, overrides: list[str], launcher: list[str]) -> tuple[float, list[dict]]:
    """Run one ``run.py -m`` sweep of ``jobs`` seeds in ``folder``; wall seconds and its rows."""
    folder.mkdir(parents=True)
    command = [
        sys.executable,
        str(ROOT / "run.py"),
        "-m",
        *overrides,
        *QUIET,
        f"seed={','.join(map(str, range(jobs)))}",
        f"hydra.sweep.dir={folder / 'multirun'}",
        *launcher,
    ]
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    rows = read_rows(folder / "results")
    if len(rows) != jobs or any(r["status"] != "ok" for r in rows):
        sys.exit(f"{folder}: expected {jobs} ok rows, found {[r['status'] for r in rows]}")
    return wall, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=4, help="jobs in the sweep (seeds 0..jobs-1)")
    parser.add_argument("--workers", type=int, default=2, help="joblib jobs at a time (hydra.launcher.n_jobs)")
    parser.add_argument("--synthetic", action="store_true", help="random data instead of Fashion-MNIST")
    parser.add_argument("--repeats", type=int, default=1, help="sweeps per launcher, alternating (median compared)")
    parser.add_argument("--keep", action="store_true", help="keep the sweep folders (printed) instead of deleting them")
    parser.add_argument("overrides", nargs="*", help="extra run.py overrides for every job, e.g. model=lenet5")
    args = parser.parse_args()
    overrides = (SYNTHETIC if args.synthetic else FASHION) + args.overrides

    base = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    load_before = os.getloadavg()[0]
    basic, joblib = [], []
    for i in range(args.repeats):
        basic_s, basic_rows = sweep(base / f"basic{i}", args.jobs, overrides, [])
        joblib_s, joblib_rows = sweep(
            base / f"joblib{i}",
            args.jobs,
            overrides,
            ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.workers}"],
        )
        basic.append(basic_s)
        joblib.append(joblib_s)
    basic_s, joblib_s = statistics.median(basic), statistics.median(joblib)

    def threads(rows: list[dict]) -> str:  # as measured at the end of each run (its row's machine)
        found = {m.group(1) for r in rows if (m := re.search(r"(\d+) threads", str(r.get("machine"))))}
        return ",".join(sorted(found)) or "?"

    print(
        f"sweep: {' '.join(overrides)} seed=0..{args.jobs - 1} ({args.jobs} jobs), {cpu_cores()} cores, "
        f"median of {args.repeats}"
    )
    print(f"{'launcher':<22}{'wall s':>9}{'s/job':>8}{'threads/job':>13}")
    print(f"{'basic (sequential)':<22}{basic_s:>9.1f}{basic_s / args.jobs:>8.1f}{threads(basic_rows):>13}")
    print(
        f"{f'joblib ({args.workers} workers)':<22}{joblib_s:>9.1f}{joblib_s / args.jobs:>8.1f}{threads(joblib_rows):>13}"
    )
    print(
        f"load average (1 min) before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f} "
        f"(above {cpu_cores()}, other processes shared the cores)"
    )
    print(f"ratio joblib/basic: {joblib_s / basic_s:.2f}x (target <= 0.6x with 2 workers on 2 cores)")
    if args.keep:
        print(f"sweep folders: {base}")
    else:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
