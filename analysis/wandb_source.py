"""Rows from W&B: offline run folders on disk, or an online project through W&B's public API.

Each W&B run becomes a results-store-like row (schema 1: ``parts`` are derived from the
config), so :func:`analysis.load.read_store` validates and de-duplicates it like any other.
Offline folders are ``<output_dir>/wandb/*run*/files/`` with ``wandb-summary.json`` and,
if present, ``config.yaml`` and ``wandb-metadata.json``. ``wandb`` is imported only for
the online project.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

_RUN_FOLDER = re.compile(r"(?:offline-)?run-(\d{8})_(\d{6})-(\w+)$")


def offline_rows(root: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """(source, row) for every ``*/wandb/*run*/files/wandb-summary.json`` under ``root``."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"no W&B folder {root}: pass the folder holding the runs' output dirs (e.g. outputs/)")
    rows = []
    for summary_path in sorted(root.glob("**/wandb/*run*/files/wandb-summary.json")):
        files = summary_path.parent
        run_dir = files.parent
        summary = _read_json(summary_path)
        config = _read_config(files / "config.yaml")
        meta = _read_json(files / "wandb-metadata.json")
        match = _RUN_FOLDER.search(run_dir.name)
        time = (
            f"{match[1][:4]}-{match[1][4:6]}-{match[1][6:]}T{match[2][:2]}:{match[2][2:4]}:{match[2][4:]}"
            if match
            else None
        )
        row = to_row(
            summary,
            config,
            run_id=match[3] if match else run_dir.name,
            time=meta.get("startedAt") or time,
            output_dir=str(run_dir.parent.parent),
            machine=meta.get("host"),
        )
        rows.append((str(summary_path), row))
    return rows


def online_rows(project: str) -> list[tuple[str, dict[str, Any]]]:
    """(source, row) for every run of the W&B project ``entity/project`` (needs network and a login)."""
    try:
        import wandb
    except ImportError as err:  # pragma: no cover - wandb is a dependency
        raise RuntimeError("reading a W&B project needs the wandb package: pip install wandb") from err
    rows = []
    for run in wandb.Api().runs(project):
        summary = dict(getattr(run.summary, "_json_dict", run.summary) or {})
        config = {k: v for k, v in dict(run.config).items() if not k.startswith("_")}
        state = {"finished": "ok", "failed": "failed", "crashed": "failed", "killed": "interrupted"}.get(
            run.state, "interrupted"
        )
        row = to_row(
            summary,
            _unflatten(config),
            run_id=run.id,
            time=str(run.created_at),
            output_dir=None,
            machine=(getattr(run, "metadata", None) or {}).get("host"),
            status=state,
        )
        rows.append((f"wandb:{project}/{run.id}", row))
    return rows


def to_row(
    summary: dict[str, Any],
    config: dict[str, Any],
    run_id: str,
    time: str | None,
    output_dir: str | None,
    machine: str | None = None,
    status: str | None = None,
) -> dict[str, Any]:
    """A results row from a W&B summary (``phase/metric`` keys) and the run's config."""
    metrics = {k: v for k, v in summary.items() if "/" in k and not k.startswith("_") and isinstance(v, (int, float))}
    if status is None:
        status = "ok" if any(k in metrics for k in ("final/acc", "retrained/acc", "quantized/acc")) else "interrupted"
    return {
        "schema_version": 1,
        "run_id": run_id,
        "time": time,
        "status": status,
        "machine": machine,
        "seed": config.get("seed"),
        "dataset": (config.get("dataset") or {}).get("name"),
        "model": (config.get("model") or {}).get("name"),
        "strategy": (config.get("strategy") or {}).get("name"),
        "experiment": config.get("experiment") if isinstance(config.get("experiment"), str) else None,
        "output_dir": output_dir,
        "config": config,
        "metrics": metrics,
    }


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _read_config(path: Path) -> dict[str, Any]:
    """W&B's config.yaml: ``{key: {value: ...}}`` per top-level key; flattened keys are nested again."""
    if not path.exists():
        return {}
    import yaml

    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return {}
    config = {
        k: (v.get("value") if isinstance(v, dict) and "value" in v else v)
        for k, v in raw.items()
        if not str(k).startswith("_")
    }
    return _unflatten(config)


def _unflatten(config: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        parts = re.split(r"[./]", str(key))
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {}) if isinstance(node.get(p, {}), dict) else node
        node[parts[-1]] = value
    return out
