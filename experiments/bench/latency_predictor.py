"""Benchmark: how well the latency table predicts, and whether pruning to a latency target lands.

For every model of the zoo and every batch size, a :class:`pruning.LatencyTable` is made
from scratch (calibrated on three measured uniform cuts, layers timed as the predictions
need them), then:

- **prediction**: ``--assignments`` random channel assignments (each group keeps a random
  share of its channels around a level that is spread over the assignments, so the measured
  latency ratios spread over about 0.4-0.95 of the dense model's) are cut from copies and
  timed against the dense model (:func:`pruning.compare_latency`, interleaved, 95% CI); the
  error is ``predicted / measured - 1``;
- **targets**: for each of ``--targets``, :func:`pruning.prune_for_latency` with that table
  prunes a copy; the measured ratio, whether it landed within +-5% (``hit``), how many models
  the search timed and its seconds.

The default zoo: torchvision mobilenet_v2, mobilenet_v3_small, mobilenet_v3_large,
efficientnet_b0, shufflenet_v2_x1_0, mnasnet1_0, regnet_x_400mf, resnet18, resnet50 and
densenet121 (100 classes, ``--tv-size`` inputs) and the CIFAR resnet56, mobilenetv2_cifar and
vgg_small (10 classes, 32x32), all untrained (latency does not depend on the weights).
Writes ``predictions.csv``, ``targets.csv`` and ``predictions.png``/``.svg`` (predicted vs
measured ratio per batch size, and each model's errors) to ``--out``, and prints the tables.

``--burn N`` runs N CPU-burning processes beside the benchmark (each a busy Python loop), to
measure on a busy machine.

    python -m experiments.bench.latency_predictor --threads 2 --out docs/latency/predictor
    python -m experiments.bench.latency_predictor --models resnet18,vgg_small --batches 1 --targets 0.7
    python -m experiments.bench.latency_predictor --burn 1 --threads 2 --out /tmp/busy
"""

from __future__ import annotations

import argparse
import copy
import csv
import math
import multiprocessing
import random
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import nn

import pruning
from experiments.models import build_model, list_models
from experiments.models.torchvision_models import torchvision_model
from pruning.latency import check_target, forget_timings

TORCHVISION = (
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "shufflenet_v2_x1_0",
    "mnasnet1_0",
    "regnet_x_400mf",
    "resnet18",
    "resnet50",
    "densenet121",
)
CIFAR = ("resnet56", "mobilenetv2_cifar", "vgg_small")


def build(name: str, tv_size: int) -> tuple[nn.Module, torch.Tensor]:
    """A zoo model (CIFAR: 10 classes, 32x32) or a torchvision one (100 classes), eval mode, and a batch-1 input."""
    if name in list_models():
        model, size = build_model(name, num_classes=10, in_channels=3, input_size=32), 32
    else:
        model, size = torchvision_model(name=name, num_classes=100, in_channels=3, input_size=tv_size), tv_size
    return model.eval(), torch.randn(1, 3, size, size)


def random_assignments(table: pruning.latency.LatencyTable, n: int, rng: random.Random) -> list[dict[str, int]]:
    """``n`` assignments: assignment i keeps, in every group, a share drawn around a level that
    goes from 0.95 down to 0.35 over the assignments (+-0.15, on the group's grid)."""
    out = []
    for i in range(n):
        level = 0.95 - 0.6 * i / max(1, n - 1)
        channels = {}
        for g, (c, _) in table.groups.items():
            keep = min(1.0, max(0.05, level + rng.uniform(-0.15, 0.15)))
            pts = table.grid[g]
            channels[g] = max([p for p in pts if p <= keep * c], default=pts[0])
        out.append({g: k for g, k in channels.items() if k < table.groups[g][0]})
    return out


def bench_one(name: str, batch: int, args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    torch.manual_seed(args.seed)
    model, x = build(name, args.tv_size)
    forget_timings()  # every table is timed from scratch: its cost is honest
    start = time.perf_counter()
    table = pruning.latency.latency_table(
        model, x, batch, args.grid, threads=args.threads, calibrate_s=args.max_time_s, build=False
    )
    calib_s = time.perf_counter() - start
    rng = random.Random(f"{args.seed}-{name}-{batch}")
    preds = []
    for i, channels in enumerate(random_assignments(table, args.assignments, rng)):
        predicted = table.predict_ratio(channels)
        cmp = table.compare(channels, args.max_time_s)
        preds.append(
            {
                "model": name,
                "batch": batch,
                "assignment": i,
                "predicted": round(predicted, 4),
                "measured": round(cmp.ratio, 4),
                "ci_low": round(cmp.ci_low, 4),
                "ci_high": round(cmp.ci_high, 4),
                "error": round(predicted / cmp.ratio - 1, 4),
                "dense_ms": round(cmp.median_a_ms, 3),
            }
        )
        print(f"  {name} b{batch} #{i}: predicted {predicted:.3f} measured {cmp.ratio:.3f}", file=sys.stderr)
    targets = []
    for target in args.target_list:
        row = {"model": name, "batch": batch, "target": target, "calibration_s": round(calib_s, 1)}
        pruned = copy.deepcopy(model)
        t0 = time.perf_counter()
        try:
            r = pruning.prune_for_latency(
                pruned, x, target, batch, table=table, threads=args.threads, max_time_s=args.max_time_s
            )
            row.update(
                measured=round(r.measured_ratio, 4),
                error=round(r.measured_ratio / target - 1, 4),
                hit=r.hit,
                models_timed=len(r.passes),
                search_s=round(r.search_seconds, 1),
                note="",
            )
        except pruning.latency.UnreachableTarget as e:
            row.update(measured=round(e.best, 4), error=round(e.best / target - 1, 4), hit=False)
            row.update(models_timed=e.models_timed, search_s=round(time.perf_counter() - t0, 1), note="unreachable")
        targets.append(row)
        print(f"  {name} b{batch} target {target}: {row['measured']:.3f} hit={row['hit']}", file=sys.stderr)
    return preds, targets


def summary(preds: list[dict], targets: list[dict]) -> list[str]:
    """The printed tables: errors per model and batch, the overall quantiles, the targets."""
    lines = [f"{'model':20s} {'batch':>5s} {'n':>3s} {'median |err|':>12s} {'max |err|':>9s}"]
    keys = sorted({(p["model"], p["batch"]) for p in preds}, key=lambda k: (k[1], k[0]))
    for m, b in keys:
        errs = [abs(p["error"]) for p in preds if (p["model"], p["batch"]) == (m, b)]
        lines.append(f"{m:20s} {b:5d} {len(errs):3d} {statistics.median(errs):12.1%} {max(errs):9.1%}")
    for b in sorted({p["batch"] for p in preds}):
        errs = sorted(abs(p["error"]) for p in preds if p["batch"] == b)
        lines.append(
            f"batch {b}: {len(errs)} assignments, median |error| {statistics.median(errs):.1%}, "
            f"90th percentile {quantile(errs, 0.9):.1%}, max {errs[-1]:.1%}"
        )
    if targets:
        lines.append("")
        lines.append(
            f"{'model':20s} {'batch':>5s} {'target':>6s} {'measured':>8s} {'error':>7s} {'hit':>4s} "
            f"{'timed':>5s} {'search s':>8s}"
        )
        for t in targets:
            lines.append(
                f"{t['model']:20s} {t['batch']:5d} {t['target']:6.2f} {t['measured']:8.3f} {t['error']:+7.1%} "
                f"{'yes' if t['hit'] else 'no':>4s} {t['models_timed']:5d} {t['search_s']:8.1f} {t['note']}"
            )
        hits = sum(t["hit"] for t in targets)
        reachable = [t for t in targets if t["note"] != "unreachable"]
        lines.append(
            f"targets landed within +-5%: {hits} of {len(targets)} ({hits / len(targets):.0%}); of the "
            f"{len(reachable)} reachable ones (the rest: the smallest model measured above the target) "
            f"{sum(t['hit'] for t in reachable)} ({sum(t['hit'] for t in reachable) / max(1, len(reachable)):.0%}); "
            f"within +-7%: {sum(abs(t['error']) <= 0.07 for t in targets)}; median search "
            f"{statistics.median(t['search_s'] for t in targets):.0f} s, "
            f"{statistics.median(t['models_timed'] for t in targets):.0f} models timed"
        )
    return lines


def quantile(sorted_values: list[float], q: float) -> float:
    """The ``q`` quantile by linear interpolation between order statistics."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def figure(preds: list[dict], path: Path, title: str) -> None:
    """Predicted vs measured ratio per batch size (with the +-5% and +-10% bands), and the
    errors of each model at each batch size."""
    batches = sorted({p["batch"] for p in preds})
    models = sorted({p["model"] for p in preds})
    fig = Figure(figsize=(5.0 * len(batches) + 6.0, 5.2))
    axes = fig.subplots(1, len(batches) + 1, gridspec_kw={"width_ratios": [1] * len(batches) + [1.3]})
    colours = {m: f"C{i % 10}" for i, m in enumerate(models)}
    markers = {m: "osD^v<>"[i // 10 % 7] for i, m in enumerate(models)}
    for ax, b in zip(axes, batches):
        line = [0.0, 1.1]
        ax.plot(line, line, color="black", lw=0.8)
        for band, alpha in ((0.10, 0.08), (0.05, 0.15)):
            ax.fill_between(
                line, [v / (1 + band) for v in line], [v * (1 + band) for v in line], color="grey", alpha=alpha
            )
        for m in models:
            pts = [p for p in preds if p["batch"] == b and p["model"] == m]
            ax.scatter(
                [p["measured"] for p in pts], [p["predicted"] for p in pts], s=18, color=colours[m], marker=markers[m]
            )
        ax.set(xlim=(0.1, 1.1), ylim=(0.1, 1.1), xlabel="measured latency ratio (pruned / dense)", title=f"batch {b}")
        ax.set_ylabel("predicted latency ratio")
        ax.set_aspect("equal")
    ax = axes[-1]
    for j, b in enumerate(batches):
        for i, m in enumerate(models):
            errs = [100 * p["error"] for p in preds if p["batch"] == b and p["model"] == m]
            y = i + (j - (len(batches) - 1) / 2) * 0.3
            ax.scatter(errs, [y] * len(errs), s=14, color=f"C{j}", label=f"batch {b}" if i == 0 else None)
    ax.axvspan(-5, 5, color="grey", alpha=0.15)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(models)), models)
    ax.set(xlabel="prediction error, % (predicted / measured - 1)", title="errors per model")
    ax.legend(loc="lower right", fontsize=8)
    for m in models:
        axes[0].scatter([], [], color=colours[m], marker=markers[m], label=m, s=18)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=120)
    fig.savefig(path.with_suffix(".svg"))


def write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def read_csv(path: Path) -> list[dict]:
    """Rows of a CSV this script wrote, numbers and booleans parsed back."""
    if not path.exists():
        return []

    def parse(v: str):
        if v in ("True", "False"):
            return v == "True"
        for cast in (int, float):
            try:
                return cast(v)
            except ValueError:
                pass
        return v

    with open(path, encoding="utf-8", newline="") as f:
        return [{k: parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


def combine(folders: list[Path], out: Path | None) -> None:
    """Join the CSVs of several runs (the first folder's header line names the machine), print the
    tables, and write the joined CSVs and the figure to ``out``."""
    preds = [r for d in folders for r in read_csv(d / "predictions.csv")]
    targets = [r for d in folders for r in read_csv(d / "targets.csv")]
    print("\n".join(summary(preds, targets)))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / "predictions.csv", preds)
        write_csv(out / "targets.csv", targets)
        head = (
            (folders[0] / "machine.txt").read_text(encoding="utf-8").strip()
            if (folders[0] / "machine.txt").exists()
            else ""
        )
        if head:
            (out / "machine.txt").write_text(head + "\n", encoding="utf-8")
        if preds:
            figure(preds, out / "predictions", f"latency table prediction vs measurement: {head}")


def _burn() -> None:
    while True:
        pass


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(TORCHVISION + CIFAR), help="comma-separated")
    parser.add_argument("--batches", default="1,16", help="comma-separated batch sizes")
    parser.add_argument("--assignments", type=int, default=4, help="random channel assignments per model and batch")
    parser.add_argument("--targets", default="0.5,0.7", help="comma-separated latency ratios in (0, 1), or none")
    parser.add_argument("--tv-size", type=int, default=128, help="side of the torchvision models' square inputs")
    parser.add_argument("--grid", type=int, default=8, help="channel multiple of the table's grid")
    parser.add_argument("--threads", type=int, default=None, help="torch threads while timing (default: torch's)")
    parser.add_argument("--max-time-s", type=float, default=10.0, help="time cap of each latency comparison")
    parser.add_argument("--burn", type=int, default=0, help="CPU-burning processes to run beside the benchmark")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="folder for the CSVs and the figure")
    parser.add_argument(
        "--combine",
        type=Path,
        nargs="+",
        default=None,
        help="measure nothing: join the CSVs of these --out folders (runs split over models) into --out",
    )
    args = parser.parse_args(argv)
    if args.combine:
        combine(args.combine, args.out)
        return
    args.target_list = [] if args.targets == "none" else [check_target(float(t)) for t in args.targets.split(",")]
    burners = [multiprocessing.Process(target=_burn, daemon=True) for _ in range(args.burn)]
    for p in burners:
        p.start()
    threads = args.threads or torch.get_num_threads()
    head = (
        f"{pruning.latency.cpu_model()}, {threads} thread(s), torch {torch.__version__}, "
        f"{args.burn} CPU burner(s) beside it, {date.today().isoformat()}"
    )
    print(f"# {head}", flush=True)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "machine.txt").write_text(head + "\n", encoding="utf-8")
    start = time.perf_counter()
    preds, targets = [], []
    try:
        for name in args.models.split(","):
            for batch in (int(b) for b in args.batches.split(",")):
                p, t = bench_one(name, batch, args)
                preds += p
                targets += t
                if args.out is not None:  # written as it goes: a long run that stops keeps what it measured
                    args.out.mkdir(parents=True, exist_ok=True)
                    write_csv(args.out / "predictions.csv", preds)
                    write_csv(args.out / "targets.csv", targets)
    finally:
        for p in burners:
            p.terminate()
    print("\n".join(summary(preds, targets)))
    print(f"\n({time.perf_counter() - start:.0f} s in all)")
    if args.out is not None and preds:
        figure(preds, args.out / "predictions", f"latency table prediction vs measurement: {head}")


if __name__ == "__main__":
    main()
