"""Sweeps (``python run.py -m``): threads per job, skipping finished jobs, progress.

* :func:`job_threads`: how many torch threads a job gets, so parallel jobs never ask for
  more threads than the machine has cores (jobs x threads <= cores).
* :func:`completed_run`: the ``ok`` row of an earlier run with the same resolved config, so
  rerunning a sweep only runs what is missing (``sweep.skip_done``).
* :class:`SweepProgress`: a Hydra callback printing "job k of N", the elapsed time and an
  estimate of the time left; jobs may end in other processes, so it counts in a file.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from experiments.checks import ConfigError, check_number
from experiments.storage.files import atomic_write_bytes, file_lock
from experiments.storage.results import read_rows
from experiments.training.distributed import is_global_zero

log = logging.getLogger(__name__)

PROGRESS_FILE = ".sweep_progress.json"
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")

# conf/hydra/launcher/*.yaml complete the plugins' launcher configs of the same name: Hydra
# still checks them against the plugins' schemas and warns that it does (deprecated, harmless).
warnings.filterwarnings("ignore", message=r"(?s).*is validated against ConfigStore schema with the same name")


def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity mask, so a SLURM allocation counts)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


OmegaConf.register_new_resolver("cores", cpu_cores, replace=True)  # ${cores:} in launcher configs


def multirun_launcher() -> DictConfig | None:
    """The launcher config of the multirun this job belongs to (None outside a multirun)."""
    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return hydra_cfg.get("launcher")


def joblib_workers(n_jobs: Any, cores: int) -> int:
    """How many jobs joblib runs at once for ``n_jobs`` (negative: cores + 1 + n_jobs)."""
    if n_jobs is None:
        return 1
    if check_number("hydra.launcher.n_jobs", n_jobs, integer=True, suffix=" other than 0") == 0:
        raise ConfigError("hydra.launcher.n_jobs=0: allowed values are integers >= 1, or -1 for one per core")
    return n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)


def job_threads(cfg: DictConfig) -> int | None:
    """Torch threads for this job: ``threads`` when set; in a sweep whose jobs share the cores
    (joblib: ``max(1, cores // n_jobs)``; submitit: ``cpus_per_task``) its share; else None
    (PyTorch's default: one thread per core)."""
    if cfg.get("threads") is not None:
        return int(cfg.threads)
    launcher = multirun_launcher()
    if launcher is None:
        return None
    target = str(launcher.get("_target_", ""))
    if target.endswith("JoblibLauncher"):
        cores = cpu_cores()
        return max(1, cores // joblib_workers(launcher.get("n_jobs"), cores))
    if "submitit" in target:
        cpus = launcher.get("cpus_per_task") or os.environ.get("SLURM_CPUS_PER_TASK")
        return int(cpus) if cpus else None
    return None


def use_job_threads(cfg: DictConfig) -> int | None:
    """Apply :func:`job_threads`: ``cfg.threads`` (the pipeline calls ``torch.set_num_threads``)
    and OMP/MKL_NUM_THREADS for the OpenMP pools this process starts later."""
    threads = job_threads(cfg)
    if threads is not None:
        for var in THREAD_ENV:
            os.environ[var] = str(threads)
        with open_dict(cfg):
            cfg.threads = threads
    return threads


# -- skipping finished jobs ---------------------------------------------------------------
def _drop(tree: dict[str, Any], dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree.get(key)
        if not isinstance(tree, dict):
            return
    tree.pop(leaf, None)


def comparable(config: dict[str, Any], ignore: list[str]) -> dict[str, Any]:
    """A resolved config without the keys that do not change what a run measures (output
    folders, threads, logging, ...), normalised as the results store holds it (JSON)."""
    tree = json.loads(json.dumps(copy.deepcopy(config), sort_keys=True, default=str))
    for key in ignore:
        _drop(tree, key)
    return tree


def skip_done(cfg: DictConfig) -> bool:
    """Whether this job may be skipped: only in a multirun, and only with ``sweep.skip_done``."""
    value = cfg.get("sweep", {}).get("skip_done", True)
    if not isinstance(value, bool):
        raise ConfigError(f"sweep.skip_done={value!r}: allowed values are true, false")
    return value and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def completed_run(cfg: DictConfig, force: bool = False) -> dict[str, Any] | None:
    """The latest ``ok`` row in ``${paths.results_dir}/runs.jsonl`` whose resolved config
    equals this job's (ignoring ``sweep.ignore``), when this job may skip (``force``: even
    outside a multirun); else None."""
    if not (force or skip_done(cfg)):
        return None
    ignore = list(cfg.get("sweep", {}).get("ignore", []))
    want = comparable(OmegaConf.to_container(cfg, resolve=True), ignore)
    for row in reversed(read_rows(cfg.paths.results_dir)):
        if (
            row.get("status") == "ok"
            and isinstance(row.get("config"), dict)
            and comparable(row["config"], ignore) == want
        ):
            return row
    return None


# -- progress -------------------------------------------------------------------------------
def sweep_plan(config: DictConfig) -> tuple[int | None, list[str]]:
    """How many jobs the basic sweeper launches for this multirun and which keys it sweeps
    ((None, []) when it cannot tell, e.g. another sweeper or a glob(...) sweep)."""
    hydra_cfg = config.hydra
    if not str(hydra_cfg.sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return None, []
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = [f"{k}={v}" for k, v in (hydra_cfg.sweeper.get("params") or {}).items()]
    params += list(hydra_cfg.overrides.task)
    try:
        overrides = OverridesParser.create().parse_overrides(params)
        jobs = BasicSweeper.split_arguments(overrides, None)[0]
    except Exception:  # glob(...) sweeps need Hydra's config loader
        return None, []
    return len(jobs), sorted({o.get_key_element() for o in overrides if o.is_sweep_override()})


def clock(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``3725`` -> ``1h02m``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class SweepProgress(Callback):
    """Progress lines of a multirun: job k of N started/done, elapsed, an estimate of the time left.

    With parallel launchers (joblib, submitit) jobs end in other processes, each holding a
    copy of this callback, so the count of finished jobs lives in ``<sweep dir>/.sweep_progress.json``
    under a lock; the estimate is elapsed / finished x (N - finished), which also holds when
    jobs run side by side. Only global rank 0 of a multi-process (DDP) job counts it.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        total, swept = sweep_plan(config)
        state = {"total": total, "swept": swept, "started": time.time(), "finished": 0, "failed": 0}
        atomic_write_bytes(self._path(config), json.dumps(state).encode())
        log.info(
            "sweep: %s job(s) into %s", total if total is not None else "an unknown number of", config.hydra.sweep.dir
        )

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        state = self._read(config)
        if state is not None and is_global_zero():
            swept = [o for o in config.hydra.overrides.task if o.split("=", 1)[0] in state["swept"]]
            log.info(
                "sweep: job %d of %s started: %s",
                config.hydra.job.num + 1,
                state["total"] or "?",
                " ".join(swept) or "(nothing swept)",
            )

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        path = self._path(config)
        if config.hydra.mode != RunMode.MULTIRUN or not path.exists() or not is_global_zero():
            return
        from hydra.core.utils import JobStatus

        failed = getattr(job_return, "status", None) != JobStatus.COMPLETED
        with file_lock(path):
            state = json.loads(path.read_text())
            state["finished"] += 1
            state["failed"] += int(failed)
            atomic_write_bytes(path, json.dumps(state).encode())
        elapsed = time.time() - state["started"]
        total, done = state["total"], state["finished"]
        left = f", about {clock(elapsed / done * max(0, total - done))} left" if total else ""
        log.info(
            "sweep: job %d of %s %s (%d of %s finished), elapsed %s%s",
            config.hydra.job.num + 1,
            total or "?",
            "failed" if failed else "done",
            done,
            total or "?",
            clock(elapsed),
            left,
        )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        state = self._read(config)
        if state is not None:
            log.info(
                "sweep: %d of %s job(s) finished in %s (%d failed)",
                state["finished"],
                state["total"] or "?",
                clock(time.time() - state["started"]),
                state["failed"],
            )

    @staticmethod
    def _path(config: DictConfig) -> Path:
        return Path(str(config.hydra.sweep.dir)) / PROGRESS_FILE

    def _read(self, config: DictConfig) -> dict[str, Any] | None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return None
        try:
            return json.loads(self._path(config).read_text())
        except (OSError, ValueError):
            return None
