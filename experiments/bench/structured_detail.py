"""Benchmark in detail: our filter pruning vs Torch-Pruning 1.6.1, side by side in one process.

What the pruned models are (params, MACs, latency) next to the time each tool took, on a few
named models. The plan-and-cut time over every timm family and torchvision CNN, each timed in
a fresh process, is :mod:`experiments.bench.structured_vs_torch_pruning`.

For every model: two identical copies (same seed) pruned with the same criterion (L1,
local per group, ratio 0.3, output layer never pruned) by ``pruning.prune_filters`` and by
Torch-Pruning (``tp.pruner.BasePruner`` with ``tp.importance.MagnitudeImportance(p=1)``,
``global_pruning=False``), plus our ``round_to`` run as an extra row. Each pruned model
must still run forward. Reported per row: params and MACs (``pruning.count`` for both
tools, so the counting rule is the same), MAC ratio next to the latency ratio at batch 1
and 32 (pruned / dense, ``pruning.measure_latency``; every variant of a model measured
round-robin ``--latency-rounds`` times, best median kept, to damp drift on a shared CPU),
and the wall time to build the groups and to prune (median of ``--repeats`` on fresh
copies, the tools interleaved within each repeat, garbage collected before each run).
Ours: "group build" times ``pruning.dependency_groups``, "prune" is
``prune_filters`` (which traces again) minus that; Torch-Pruning: the pruner's
constructor (dependency graph) and ``step()``. "ours/TP" compares the totals (target
<= 0.5). A Torch-Pruning failure is reported as "FAILED (stage): reason".

Needs the ``bench`` extra (``pip install -e .[bench]``: torch-pruning==1.6.1). Only
calls Torch-Pruning; none of its code is copied here.

    python -m experiments.bench.structured_detail --threads 2
    python -m experiments.bench.structured_detail --quick --models resnet20
"""

from __future__ import annotations

import argparse
import copy
import csv
import gc
import os
import platform
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from importlib import metadata

import torch
import torchvision
from torch import nn

import pruning
from experiments.bench.cold_cut import classifier
from experiments.models import MODELS, list_models, torchvision_model

DEFAULT_MODELS = ("resnet56", "vgg16_cifar", "mobilenetv2_cifar", "resnet50", "densenet121")
EXTRA_MODELS = ("regnet_x_400mf", "shufflenet_v2_x1_0")
COLUMNS = (
    "model", "tool", "params", "macs", "mac_ratio", "lat_b1_ratio", "lat_b32_ratio",
    "lat_b1_ms", "lat_b32_ms", "build_s", "prune_s", "total_s", "time_vs_tp", "status",
)  # fmt: skip


def build(name: str, tv_size: int, cifar_size: int, seed: int) -> tuple[nn.Module, torch.Tensor]:
    """A zoo model (CIFAR: 10 classes) or a torchvision one (1000 classes), eval mode, and a
    batch-1 example input."""
    torch.manual_seed(seed)
    if name in list_models() and name != "tv":
        size = cifar_size
        model = MODELS[name](num_classes=10, in_channels=3, input_size=size)
    else:
        size = tv_size
        model = torchvision_model(name=name, num_classes=1000, in_channels=3, input_size=size)
    return model.eval(), torch.randn(1, 3, size, size)


def check_forward(model: nn.Module, x: torch.Tensor, shape: torch.Size) -> None:
    with torch.inference_mode():
        y = model(x)
    if y.shape != shape or not bool(torch.isfinite(y).all()):
        raise RuntimeError(
            f"output {tuple(y.shape)} (finite: {bool(torch.isfinite(y).all())}), expected {tuple(shape)}"
        )


class Failed(Exception):
    """A tool failed on a model at ``stage``."""

    def __init__(self, stage: str, error: BaseException):
        super().__init__(
            f"FAILED ({stage}): {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        )


def staged(stage: str, fn: Callable, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # reported per model, never fatal
        raise Failed(stage, e) from e


def prune_ours(base: nn.Module, x: torch.Tensor, ignore: str, ratio: float, round_to: int):
    """(pruned model, group-build s, prune s) on fresh copies: ``dependency_groups`` timed on
    one, ``prune_filters`` on another; prune s is the latter minus the former."""
    t0 = time.perf_counter()
    staged("group build", pruning.dependency_groups, copy.deepcopy(base), x, ignore=(ignore,))
    build_s = time.perf_counter() - t0
    model = copy.deepcopy(base)
    t0 = time.perf_counter()
    staged("prune", pruning.prune_filters, model, x, ratio, criterion="l1", ignore=(ignore,), round_to=round_to)
    return model, build_s, max(0.0, time.perf_counter() - t0 - build_s)


def prune_torch_pruning(base: nn.Module, x: torch.Tensor, ignore: str, ratio: float):
    """(pruned model, graph-build s, step s) with Torch-Pruning on a fresh copy."""
    import torch_pruning as tp

    model = copy.deepcopy(base)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        pruner = staged(
            "group build",
            tp.pruner.BasePruner,
            model,
            x,
            importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=ratio,
            ignored_layers=[model.get_submodule(ignore)],
            global_pruning=False,
        )
        t1 = time.perf_counter()
        staged("prune", pruner.step)
        return model, t1 - t0, time.perf_counter() - t1


def timed_runs(tools: dict[str, Callable], repeats: int) -> dict[str, tuple | Failed]:
    """Run every tool ``repeats`` times, interleaved (so load drift hits all alike):
    tool -> (last pruned model, median build s, median prune s), or its failure."""
    samples: dict[str, list] = {tool: [] for tool in tools}
    out: dict[str, tuple | Failed] = {}
    for _ in range(repeats):
        for tool, run in tools.items():
            if isinstance(out.get(tool), Failed):
                continue
            gc.collect()  # else the next tool's timing pays for collecting this one's garbage
            try:
                model, build_s, prune_s = run()
            except Failed as e:
                out[tool] = e
                continue
            samples[tool].append((build_s, prune_s))
            out[tool] = (
                model,
                statistics.median(b for b, _ in samples[tool]),
                statistics.median(p for _, p in samples[tool]),
            )
    return out


def latencies(
    variants: dict[str, nn.Module], x: torch.Tensor, batches: Sequence[int], repeats: int, rounds: int
) -> dict[str, dict[int, float]]:
    """Seconds per forward of every variant at every batch: best of ``rounds`` medians,
    variants interleaved so load drift hits them alike."""
    out = {k: {b: float("inf") for b in batches} for k in variants}
    for _ in range(rounds):
        for b in batches:
            for k, m in variants.items():
                out[k][b] = min(
                    out[k][b], pruning.measure_latency(m, x, batch_size=b, repeats=repeats, warmup=2 if b == 1 else 1)
                )
    return out


def width_differences(a: nn.Module, b: nn.Module, limit: int = 6) -> list[str]:
    """Layers whose weight shapes differ between two pruned copies of one model."""
    shapes_b = {n: tuple(m.weight.shape) for n, m in b.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    diffs = [
        f"{n}: ours {tuple(m.weight.shape)} vs TP {shapes_b.get(n)}"
        for n, m in a.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear)) and tuple(m.weight.shape) != shapes_b.get(n)
    ]
    return diffs[:limit] + ([f"... {len(diffs) - limit} more"] if len(diffs) > limit else [])


def bench_model(
    name: str,
    *,
    ratio: float = 0.3,
    round_to: int = 8,
    repeats: int = 3,
    latency_repeats: int = 5,
    latency_rounds: int = 3,
    batches: Sequence[int] = (1, 32),
    tv_size: int = 224,
    cifar_size: int = 32,
    seed: int = 0,
    torch_pruning: bool = True,
) -> tuple[list[dict], list[str]]:
    """Rows (dense, ours, ours round_to, TP) for one model, and notes on width differences."""
    base, x = build(name, tv_size, cifar_size, seed)
    ignore = classifier(base, x)
    with torch.inference_mode():
        shape = base(x).shape
    dense = pruning.count(base, x)
    rows = {"dense": dict(model=name, tool="dense", params=dense.params, macs=dense.macs, status="ok")}
    models = {"dense": base}
    times: dict[str, tuple[float, float]] = {}
    tools: dict[str, Callable] = {"ours": lambda: prune_ours(base, x, ignore, ratio, 1)}
    if round_to > 1:
        tools[f"ours round_to={round_to}"] = lambda: prune_ours(base, x, ignore, ratio, round_to)
    if torch_pruning:
        tools["Torch-Pruning 1.6.1"] = lambda: prune_torch_pruning(base, x, ignore, ratio)
    for tool, result in timed_runs(tools, repeats).items():
        row = dict(model=name, tool=tool)
        try:
            if isinstance(result, Failed):
                raise result
            model, build_s, prune_s = result
            total = build_s + prune_s
            staged("forward after pruning", check_forward, model, x, shape)
            counts = staged("count", pruning.count, model, x)
        except Failed as e:
            rows[tool] = dict(row, status=str(e))
            continue
        times[tool] = (build_s, total)
        models[tool] = model
        rows[tool] = dict(
            row, params=counts.params, macs=counts.macs, build_s=build_s, prune_s=prune_s, total_s=total, status="ok"
        )
    lat = latencies(models, x, batches, latency_repeats, latency_rounds)
    tp_key = next((k for k in times if k.startswith("Torch-Pruning")), None)
    for tool, row in rows.items():
        if tool not in models:
            continue
        row["mac_ratio"] = row["macs"] / dense.macs
        for b in batches:
            row[f"lat_b{b}_ms"] = lat[tool][b] * 1e3
            row[f"lat_b{b}_ratio"] = lat[tool][b] / lat["dense"][b]
        if tool.startswith("ours") and tp_key is not None:
            row["time_vs_tp"] = times[tool][1] / times[tp_key][1]
    notes = []
    tp_model = models.get(tp_key) if tp_key else None
    if tp_model is not None and "ours" in models:
        o, t = rows["ours"], rows[tp_key]
        same = (o["params"], o["macs"]) == (t["params"], t["macs"])
        notes.append(f"{name}: ours vs TP params/MACs {'match' if same else 'DIFFER'}")
        notes += [f"  {d}" for d in width_differences(models["ours"], tp_model)]
    return list(rows.values()), notes


def _warm_up(torch_pruning: bool) -> None:
    """Pay first-call costs (lazy imports, dispatcher caches) outside the timed runs."""
    base, x = build("vgg_small", 32, 32, 0)
    ignore = classifier(base, x)
    prune_ours(base, x, ignore, 0.3, 1)
    if torch_pruning:
        prune_torch_pruning(base, x, ignore, 0.3)


def run_benchmark(models: Sequence[str], **options) -> tuple[list[dict], list[str]]:
    """All rows and notes for ``models`` (options as in ``bench_model``)."""
    if options.get("torch_pruning", True):
        try:
            import torch_pruning  # noqa: F401
        except ImportError as e:
            raise ImportError("Torch-Pruning is not installed: pip install -e .[bench] (torch-pruning==1.6.1)") from e
    _warm_up(options.get("torch_pruning", True))
    rows, notes = [], []
    for i, name in enumerate(models, 1):
        print(f"[{i}/{len(models)}] {name} ...", file=sys.stderr, flush=True)
        r, n = bench_model(name, **options)
        rows += r
        notes += n
    return rows, notes


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[dict], batches: Sequence[int]) -> None:
    lat_heads = "".join(f" {'lat b' + str(b):>8} {'ms b' + str(b):>9}" for b in batches)
    head = (
        f"{'model':<19} {'tool':<20} {'params':>10} {'MACs':>13} {'MAC r':>6}{lat_heads} "
        f"{'build s':>8} {'prune s':>8} {'ours/TP':>7}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        line = f"{r['model']:<19} {r['tool']:<20} "
        if r["status"] != "ok":
            print(line + r["status"])
            continue
        lat = "".join(
            f" {_fmt(r.get(f'lat_b{b}_ratio'), '.2f'):>8} {_fmt(r.get(f'lat_b{b}_ms'), '.2f'):>9}" for b in batches
        )
        print(
            line
            + f"{r['params']:>10,} {r['macs']:>13,} {r['mac_ratio']:>6.3f}{lat} {_fmt(r.get('build_s'), '.3f'):>8} "
            f"{_fmt(r.get('prune_s'), '.3f'):>8} {_fmt(r.get('time_vs_tp'), '.2f'):>7}"
        )


def print_goals(rows: list[dict], round_to: int, batches: Sequence[int]) -> None:
    """One verdict line per model: params/MACs match, time target, latency-vs-MAC gap."""
    by_model: dict[str, dict[str, dict]] = {}
    for r in rows:
        tool = "tp" if r["tool"].startswith("Torch-Pruning") else "rt" if "round_to" in r["tool"] else r["tool"]
        by_model.setdefault(r["model"], {})[tool] = r
    for name, tools in by_model.items():
        ours, rt, tp = tools.get("ours", {}), tools.get("rt", {}), tools.get("tp", {})
        parts = [f"ours {'prunes + runs' if ours.get('status') == 'ok' else ours.get('status')}"]
        if tp.get("status") != "ok":
            parts.append(f"TP {tp.get('status', 'not run')}")
        else:
            parts.append(
                f"time ours/TP {ours.get('time_vs_tp', float('nan')):.2f} "
                f"({'meets' if ours.get('time_vs_tp', 9) <= 0.5 else 'MISSES'} <= 0.5)"
            )
        for b in batches:
            gaps = [
                (k, abs(r[f"lat_b{b}_ratio"] - r["mac_ratio"]))
                for k, r in (("ours", ours), (f"r{round_to}", rt), ("TP", tp))
                if r.get(f"lat_b{b}_ratio") is not None
            ]
            if gaps:
                parts.append(f"|lat-MAC| b{b}: " + ", ".join(f"{k} {g:.2f}" for k, g in gaps))
        print(f"{name}: " + "; ".join(parts))


def write_csv(path: str, rows: list[dict]) -> None:
    keys = list(COLUMNS) + sorted({k for r in rows for k in r} - set(COLUMNS))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help=f"comma-separated zoo or torchvision names (also: {', '.join(EXTRA_MODELS)})",
    )
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--round-to", type=int, default=8, help="our extra row's round_to (1: no extra row)")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats of group build / prune")
    parser.add_argument("--latency-repeats", type=int, default=5, help="forward passes per latency median")
    parser.add_argument("--latency-rounds", type=int, default=3, help="interleaved rounds; best median kept")
    parser.add_argument("--batches", default="1,32", help="latency batch sizes")
    parser.add_argument("--tv-size", type=int, default=224, help="input side of torchvision models")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="1 repeat, 2 latency repeats, 1 round, tv-size 64")
    parser.add_argument("--csv", metavar="PATH", help="also write the table as CSV")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.latency_repeats, args.latency_rounds, args.tv_size = 1, 2, 1, min(args.tv_size, 64)
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    try:
        tp_version = metadata.version("torch-pruning")
    except metadata.PackageNotFoundError:
        sys.exit("Torch-Pruning is not installed: pip install -e .[bench] (torch-pruning==1.6.1)")
    print(
        "command: python -m experiments.bench.structured_detail " + shlex.join(sys.argv[1:] if argv is None else argv)
    )
    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, torch_pruning {tp_version}, "
        f"{platform.processor() or platform.machine()}, threads={args.threads}, "
        f"load average before: {os.getloadavg()[0]:.2f}"
    )
    start = time.perf_counter()
    rows, notes = run_benchmark(
        models,
        ratio=args.ratio,
        round_to=args.round_to,
        repeats=args.repeats,
        latency_repeats=args.latency_repeats,
        latency_rounds=args.latency_rounds,
        batches=batches,
        tv_size=args.tv_size,
        seed=args.seed,
    )
    print()
    print_table(rows, batches)
    print(
        "\nlat bN: pruned/dense latency at batch N (compare with MAC r); ms bN: ms per forward; "
        "ours/TP: total (build + prune) wall time ratio, target <= 0.5;\nour prune s = prune_filters minus "
        "dependency_groups (scoring + cutting; 0.000 where below timing noise)"
    )
    print("\n".join(["", *notes]))
    print()
    print_goals(rows, args.round_to, batches)
    print(
        f"\nwall {time.perf_counter() - start:.0f} s, load average after: {os.getloadavg()[0]:.2f} "
        "(a shared CPU makes timings noisy)"
    )
    if args.csv:
        write_csv(args.csv, rows)
        print(f"wrote {args.csv}")


if __name__ == "__main__":
    main()
