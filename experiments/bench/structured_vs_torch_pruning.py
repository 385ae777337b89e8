"""Benchmark: time to plan and cut, ours vs Torch-Pruning 1.6.1, every model in a cold process.

Models: the timm CNN family list (``tests/pruning/timm_families.json``: one model per family
plus the variants, each built as :mod:`experiments.bench.timm_families` builds it, at the
input size listed there) and torchvision's classification CNNs (its transformers left out):
by default the smallest of each torchvision model module (:data:`TORCHVISION_FAMILIES`, the
timm list's rule), ``--torchvision all`` for all 68.
Each model is pruned by each tool in a fresh Python process (:mod:`experiments.bench.cold_cut`),
one after the other, the order of the two tools alternating from model to model so that a
change in the machine's load falls on both alike. Same settings for both: L1 magnitude,
ratio 0.3 in every group (local, not global), the classifier left uncut, one torch thread.

What is fair, and what is timed:

* A fresh process per model and tool: each tool pays its own first-call costs (lazy imports
  inside the library, first use of each torch op) on every model, as a script that prunes one
  model does. Importing the tool is timed apart (``import_s``) and left out of the ratio:
  it is paid once per process whatever the model.
* Timed: the plan and the cut, nothing else. Ours: ``prune_filters`` (trace, groups, scores,
  cut and the forward pass on the cut model that it runs before returning, so ours also pays
  for a check Torch-Pruning does not make). Torch-Pruning: the pruner's constructor (its
  dependency graph) and ``step()``; its pruned model is run after the clock stops, and a
  model that does not run counts as a failure.
* Input size: the smallest square input that runs the model (the timm list's size; for
  torchvision the smallest of 32, 64, 96, ... that runs), batch 1. The groups and the cut do
  not depend on it; a larger input adds convolution time to both tools (Torch-Pruning
  traces with a real forward pass, ours runs a shapes-only trace and one real forward of the
  cut model), which measures the convolutions rather than the engines. ``--tv-size 224``
  times torchvision models at ImageNet size.
* Timeout: ``--timeout`` seconds for the plan and cut of one model by one tool (reported as
  ``timeout``; not in the median). Torch-Pruning passes 60 s on some ECA models.

Reported: per model the seconds of each tool and ours/TP; the median of ours/TP over the
models both tools cut (per source and in all); coverage per source: cut / refused (the
reason) / failed (the stage and error) / timeout. ``--csv`` writes the rows, ``--markdown``
the coverage tables.

Needs the ``bench`` extra (``pip install -e .[bench]``: torch-pruning==1.6.1) and timm.

    python -m experiments.bench.structured_vs_torch_pruning --csv bench.csv --markdown coverage.md
    python -m experiments.bench.structured_vs_torch_pruning --models resnet10t,resnet50 --timeout 30
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import date

from experiments.bench.cold_cut import TORCHVISION_SKIP
from experiments.bench.timm_families import VARIANTS, read_list

TOOLS = ("ours", "tp")
COLUMNS = (
    "model",
    "source",
    "set",
    "input",
    "tool",
    "status",
    "seconds",
    "cpu_s",
    "import_s",
    "params",
    "params_after",
    "detail",
)
SETS = ("timm families", "timm variants", "torchvision")


# the smallest model (parameters) of each torchvision classification module, as in the timm list
TORCHVISION_FAMILIES = (
    "alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "googlenet", "inception_v3", "mnasnet0_5",
    "mobilenet_v2", "mobilenet_v3_small", "regnet_y_400mf", "resnet18", "shufflenet_v2_x0_5", "squeezenet1_1", "vgg11",
)  # fmt: skip


def torchvision_cnns(which: str = "families") -> list[str]:
    """``families``: :data:`TORCHVISION_FAMILIES`; ``all``: every torchvision classification CNN."""
    if which == "families":
        return list(TORCHVISION_FAMILIES)
    import torchvision

    return [n for n in torchvision.models.list_models(module=torchvision.models) if not n.startswith(TORCHVISION_SKIP)]


def model_list(sources: Sequence[str], tv_size: int, torchvision: str = "families") -> list[dict]:
    """``{model, source, set, size, kwargs}`` for every model benchmarked."""
    out = []
    if "timm" in sources:
        for e in read_list():
            kind = "timm variants" if e["model"] in VARIANTS else "timm families"
            out.append(dict(model=e["model"], source="timm", set=kind, size=e["input_size"], kwargs=e["kwargs"]))
    if "tv" in sources:
        out += [
            dict(model=n, source="tv", set="torchvision", size=tv_size, kwargs={})
            for n in torchvision_cnns(torchvision)
        ]
    return out


def run_one(entry: dict, tool: str, ratio: float, timeout: float) -> dict:
    """One tool on one model in a fresh process (see :mod:`experiments.bench.cold_cut`)."""
    cmd = [
        sys.executable, "-m", "experiments.bench.cold_cut", "--tool", tool, "--source", entry["source"],
        "--model", entry["model"], "--size", str(entry["size"]), "--kwargs", json.dumps(entry["kwargs"]),
        "--ratio", str(ratio), "--timeout", str(timeout),
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    base = dict(model=entry["model"], source=entry["source"], set=entry["set"], tool=tool)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 600, env=env)
    except subprocess.TimeoutExpired:
        return dict(base, status="timeout", seconds=timeout, detail="the process did not finish")
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return dict(base, **json.loads(line))
    tail = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
    return dict(base, status="failed", detail=f"process: {tail[:300]}")


def ratios(rows: list[dict], field: str = "seconds") -> dict[tuple[str, str], float]:
    """``{(source, model): ours / TP}`` of ``field`` (``seconds``: wall, ``cpu_s``: CPU time)
    for the models both tools cut."""
    by = {(r["source"], r["model"], r["tool"]): r for r in rows}
    out = {}
    for (source, model, tool), r in by.items():
        tp = by.get((source, model, "tp"))
        if tool == "ours" and r["status"] == "cut" and tp is not None and tp["status"] == "cut":
            out[(source, model)] = r[field] / tp[field]
    return out


def medians(rows: list[dict], field: str = "seconds") -> dict[str, tuple[int, float]]:
    """``{set or "all": (models both cut, median ours/TP of field)}``."""
    r = ratios(rows, field)
    sets = {(row["source"], row["model"]): row["set"] for row in rows}
    out = {}
    for name in (*SETS, "all"):
        vals = [v for m, v in r.items() if name in ("all", sets[m])]
        if vals:
            out[name] = (len(vals), statistics.median(vals))
    return out


def print_table(rows: list[dict]) -> None:
    by = {(r["source"], r["model"], r["tool"]): r for r in rows}
    r, rc = ratios(rows), ratios(rows, "cpu_s")
    head = f"{'model':<28} {'source':<6} {'input':>5} {'ours s':>8} {'TP s':>8} {'ours/TP':>7} {'CPU r':>6}  status"
    print(head)
    print("-" * len(head))
    for key in dict.fromkeys((row["source"], row["model"]) for row in rows):
        source, model = key
        o, t = by.get((*key, "ours"), {}), by.get((*key, "tp"), {})

        def secs(x: dict) -> str:
            return f"{x['seconds']:.3f}" if x.get("status") == "cut" else x.get("status", "-")

        status = "; ".join(
            f"{who} {x['status']}: {x.get('detail', '')[:90]}"
            for who, x in (("ours", o), ("TP", t))
            if x and x["status"] != "cut"
        )
        ratio = f"{r[key]:.3f} {rc[key]:6.3f}" if key in r else f"{'-':>7} {'-':>6}"
        size = o.get("input") or t.get("input") or "-"
        print(f"{model:<28} {source:<6} {size!s:>5} {secs(o):>8} {secs(t):>8} {ratio:>7}  {status}")


def coverage_markdown(rows: list[dict]) -> str:
    """Per set: counts of each status for both tools, then every model not cut, with why."""
    lines = ["| models | tool | cut | refused | failed | timeout |", "|---|---|---|---|---|---|"]
    for name in SETS:
        part = [r for r in rows if r["set"] == name]
        if not part:
            continue
        n = len({(r["source"], r["model"]) for r in part})
        for tool, label in (("ours", "prunekit"), ("tp", "Torch-Pruning 1.6.1")):
            counts = [
                sum(r["status"] == s for r in part if r["tool"] == tool)
                for s in ("cut", "refused", "failed", "timeout")
            ]
            lines.append(f"| {name} ({n}) | {label} | " + " | ".join(map(str, counts)) + " |")
    lines += ["", "| model | tool | status | reason |", "|---|---|---|---|"]
    for r in rows:
        if r["status"] != "cut":
            detail = r.get("detail", "").replace("|", "\\|")
            lines.append(
                f"| {r['model']} | {'prunekit' if r['tool'] == 'ours' else 'Torch-Pruning'} | {r['status']} | {detail} |"
            )
    return "\n".join(lines) + "\n"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", default="timm,tv", help="timm (the family list), tv (torchvision CNNs)")
    parser.add_argument(
        "--torchvision", choices=("families", "all"), default="families", help="the smallest CNN of each module, or all"
    )
    parser.add_argument("--models", default="", help="comma-separated names: only these of the list")
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds for one tool's plan and cut of one model")
    parser.add_argument(
        "--tv-size", type=int, default=0, help="input side of torchvision models (0: the smallest that runs)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="models benchmarked at once (each one's two tools in turn)")
    parser.add_argument("--csv", metavar="PATH", help="also write the rows as CSV")
    parser.add_argument("--markdown", metavar="PATH", help="also write the coverage tables as Markdown")
    args = parser.parse_args(argv)
    entries = model_list(args.sources.split(","), args.tv_size, args.torchvision)
    if args.models:
        wanted = set(args.models.split(","))
        entries = [e for e in entries if e["model"] in wanted]
    from importlib import metadata

    import torch

    print(
        "command: python -m experiments.bench.structured_vs_torch_pruning "
        + shlex.join(sys.argv[1:] if argv is None else argv)
    )
    print(
        f"{cpu_model()}, {os.cpu_count()} cores, 1 torch thread per process, torch {torch.__version__}, "
        f"torch_pruning {metadata.version('torch-pruning')}, {date.today()}, load average before: {os.getloadavg()[0]:.2f}"
    )
    start = time.perf_counter()

    def both(i: int) -> list[dict]:
        out = []
        for tool in TOOLS if i % 2 == 0 else TOOLS[::-1]:
            out.append(run_one(entries[i], tool, args.ratio, args.timeout))
            print(
                f"[{i + 1}/{len(entries)}] {entries[i]['model']} {tool}: {out[-1]['status']} "
                f"{out[-1].get('seconds', float('nan')):.3f} s {out[-1].get('detail', '')[:120]}",
                file=sys.stderr,
                flush=True,
            )
        return out

    with ThreadPoolExecutor(args.jobs) as pool:
        rows = [row for pair in pool.map(both, range(len(entries))) for row in pair]
    rows.sort(key=lambda r: (SETS.index(r["set"]), r["model"], r["tool"]))
    print()
    print_table(rows)
    print()
    cpu = medians(rows, "cpu_s")
    for name, (n, med) in medians(rows).items():
        print(f"median ours/TP, {name}: {med:.3f} wall time, {cpu[name][1]:.3f} CPU time, over {n} models both cut")
    print()
    print(coverage_markdown(rows))
    print(f"wall {time.perf_counter() - start:.0f} s, load average after: {os.getloadavg()[0]:.2f}")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(coverage_markdown(rows))


if __name__ == "__main__":
    main()
