"""Benchmark: ``pruning.sensitivity`` vs the naive sensitivity loop, side by side in one run.

The naive loop is what Distiller and NNI run: for every group and ratio, copy the model,
``prune_filters`` the group, evaluate the whole network on every batch. Ours masks the
group's consumers on the unpruned model, reruns only the layers after the group, and
stacks the ratios of a group in one batch. Both arms score channels with the same
criterion (L1 by default) and evaluate the same synthetic data: ``--images`` random
images whose labels are the dense model's predictions (so the dense accuracy is 100%
and pruning lowers it), with BatchNorm statistics calibrated on such images.

The arms are interleaved per group so load drift on a shared CPU hits both alike: our
scan runs once with a ``progress`` callback, and as each group starts the callback runs
and times the naive loop for that group; the callback's time is taken out of ours.
Ours also pays its one-off costs (graph, probe, the pass that caches activations);
the naive arm pays one dense evaluation for the base accuracy.

Reported per model: naive and our seconds, ours/naive and the speed-up, the MAC bound
(whole-net MACs over the average MACs from a group's first consumer on: what rerunning
only the layers after a group saves; ours also runs each group's consumers on the kept
channels only, so it can beat it), the largest accuracy difference between the arms over
all (group, ratio) rows, and whether every row's plan agrees (kept channels as
``planned_channels`` says, MACs and params removed as ``pruning.count`` of the naive
arm's pruned copy says; checked outside both timings).

    python -m experiments.bench.sensitivity_scan --models vgg16_cifar,resnet56 --images 2000 --ratios 9 --threads 2
    python -m experiments.bench.sensitivity_scan --models resnet20 --images 200 --ratios 3 --max-groups 4
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence

import torch
from torch import nn

import pruning
from experiments.models import MODELS
from pruning.evaluation import evaluate
from pruning.structured import SensitivityTable, sensitivity

TARGETS = {"vgg16_cifar": 2.0, "resnet56": 1.6}


def build(name: str, images: int, batch_size: int, seed: int) -> tuple[nn.Module, torch.Tensor, list]:
    """A zoo model (eval mode, BatchNorm calibrated on synthetic images), a batch-1 example
    input and ``(inputs, labels)`` batches labelled by the dense model."""
    torch.manual_seed(seed)
    model = MODELS[name](num_classes=10, in_channels=3, input_size=32)
    xs = [torch.randn(min(batch_size, images - i), 3, 32, 32) for i in range(0, images, batch_size)]
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for x in xs[:4]:
            model(x)
    model.eval()
    with torch.inference_mode():
        batches = [(x, model(x).argmax(1)) for x in xs]
    return model, torch.randn(1, 3, 32, 32), batches


def mac_bound(model: nn.Module, x: torch.Tensor, groups: Sequence[str]) -> float:
    """Whole-net MACs over the mean MACs of the layers from each group's first consumer on."""
    order: list[tuple[int, int]] = []  # (id(module), MACs) in call order

    def hook(m: nn.Module, args: tuple, out: torch.Tensor) -> None:
        per = m.in_features if isinstance(m, nn.Linear) else m.weight.shape[1] * m.weight[0, 0].numel()
        order.append((id(m), out.numel() * per))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
    total = sum(macs for _, macs in order)
    by_name = {n: g for g in pruning.dependency_groups(model, x) for n in g.names}
    suffixes = []
    for name in groups:
        consumers = {id(m.module) for m in by_name[name].members if m.kind == "module" and m.dim == 1}
        first = min(i for i, (key, _) in enumerate(order) if key in consumers)
        suffixes.append(sum(macs for _, macs in order[first:]))
    return total * len(suffixes) / sum(suffixes)


def naive_group(
    model: nn.Module,
    x: torch.Tensor,
    batches: list,
    group: str,
    ratios: Sequence[float],
    criterion: str,
    dense: pruning.measure.Counts,
) -> tuple[float, dict[float, tuple[float, tuple[int, int, int]]]]:
    """The naive loop for one group: (seconds, ``{ratio: (accuracy, (kept, MACs removed, params
    removed))}``). Only copy + prune + evaluate are timed; the plan check (``planned_channels``
    and ``pruning.count`` of the pruned copy) is not."""
    seconds, out = 0.0, {}
    for r in ratios:
        t = time.perf_counter()
        pruned = copy.deepcopy(model)
        pruning.prune_filters(pruned, x, {group: r}, criterion)
        acc = evaluate(pruned, batches)
        seconds += time.perf_counter() - t
        counts = pruning.count(pruned, x)
        kept = pruning.planned_channels(model, x, {group: r})[group][1]
        out[r] = (acc, (kept, dense.macs - counts.macs, dense.params - counts.params))
    return seconds, out


def bench_model(
    name: str,
    *,
    images: int,
    ratios: Sequence[float],
    batch_size: int,
    criterion: str,
    seed: int,
    max_groups: int | None,
    max_rows: int,
) -> dict:
    model, x, batches = build(name, images, batch_size, seed)
    groups = list(pruning.group_channels(model, x))[:max_groups]
    gc.collect()
    t0 = time.perf_counter()
    naive_base = evaluate(model, batches)
    naive_s = time.perf_counter() - t0
    naive: dict[str, dict[float, tuple[float, tuple[int, int, int]]]] = {}
    dense = pruning.count(model, x)
    paused = 0.0

    def progress(i: int, n: int, group: str) -> None:
        nonlocal naive_s, paused
        start = time.perf_counter()
        print(f"  {name}: group {i} of {n} ({group})", file=sys.stderr, flush=True)
        gc.collect()
        seconds, naive[group] = naive_group(model, x, batches, group, ratios, criterion, dense)
        naive_s += seconds
        gc.collect()
        paused += time.perf_counter() - start

    t0 = time.perf_counter()
    table: SensitivityTable = sensitivity(
        model, x, batches, ratios, criterion, groups=groups, progress=progress, max_rows=max_rows
    )
    ours_s = time.perf_counter() - t0 - paused
    diffs = [abs(r["metric"] - naive[r["group"]][r["ratio"]][0]) for r in table.rows]
    kept_ok = all(
        (r["kept"], r["macs_removed"], r["params_removed"]) == naive[r["group"]][r["ratio"]][1] for r in table.rows
    )
    return dict(
        model=name,
        groups=len(groups),
        rows=len(table.rows),
        naive_s=naive_s,
        ours_s=ours_s,
        ratio=ours_s / naive_s,
        speedup=naive_s / ours_s,
        bound=mac_bound(model, x, groups),
        max_diff_pp=100 * max(diffs + [abs(table.base_metric - naive_base)]),
        kept_ok=kept_ok,
        base=table.base_metric,
        mean_drop_pp=100 * sum(table.base_metric - r["metric"] for r in table.rows) / len(table.rows),
    )


def print_table(results: list[dict]) -> None:
    head = (
        f"{'model':<13} {'groups':>6} {'rows':>5} {'naive s':>9} {'ours s':>8} {'ours/naive':>10} "
        f"{'speed-up':>8} {'MAC bound':>9} {'max |dacc| pp':>13} {'plan':>5} {'mean drop pp':>12}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        print(
            f"{r['model']:<13} {r['groups']:>6} {r['rows']:>5} {r['naive_s']:>9.1f} {r['ours_s']:>8.1f} "
            f"{r['ratio']:>10.3f} {r['speedup']:>7.2f}x {r['bound']:>8.2f}x {r['max_diff_pp']:>13.3f} "
            f"{'same' if r['kept_ok'] else 'DIFF':>5} {r['mean_drop_pp']:>12.2f}"
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="vgg16_cifar,resnet56", help="comma-separated zoo names (32x32 inputs)")
    parser.add_argument("--images", type=int, default=2000, help="synthetic evaluation images")
    parser.add_argument("--ratios", type=int, default=9, help="ratios i/(n+1), i = 1..n (9: 0.1 .. 0.9)")
    parser.add_argument("--batch-size", type=int, default=100, help="images per evaluation batch (both arms)")
    parser.add_argument("--max-rows", type=int, default=256, help="ours: rows (images x ratios) per forward")
    parser.add_argument("--criterion", default="l1", help="a data-free criterion name")
    parser.add_argument("--max-groups", type=int, default=None, help="scan only the first N groups (quick runs)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    ratios = [round(i / (args.ratios + 1), 6) for i in range(1, args.ratios + 1)]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    print("command: python -m experiments.bench.sensitivity_scan " + shlex.join(sys.argv[1:] if argv is None else argv))
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, threads={args.threads}, "
        f"images={args.images}, batch={args.batch_size}, ratios={ratios}, criterion={args.criterion}, "
        f"load average before: {os.getloadavg()[0]:.2f}"
    )
    start = time.perf_counter()
    results = []
    for i, name in enumerate(models, 1):
        print(f"[{i}/{len(models)}] {name} ...", file=sys.stderr, flush=True)
        results.append(
            bench_model(
                name,
                images=args.images,
                ratios=ratios,
                batch_size=args.batch_size,
                criterion=args.criterion,
                seed=args.seed,
                max_groups=args.max_groups,
                max_rows=args.max_rows,
            )
        )
    print()
    print_table(results)
    print(
        "\nnaive: copy + prune_filters + evaluate per (group, ratio); ours: pruning.sensitivity; both measured "
        "in one run, interleaved per group.\nMAC bound: whole-net MACs / mean MACs from each group's first "
        "consumer on; max |dacc|: largest accuracy difference (percentage points) over all rows;\nplan: kept "
        "channels, MACs and params removed equal to the naive arm's for every row; mean drop: mean accuracy drop "
        "over the rows (dense labels: 100%).\n"
    )
    for r in results:
        goal = TARGETS.get(r["model"])
        verdict = "" if goal is None else f"; target >= {goal:.1f}x {'met' if r['speedup'] >= goal else 'MISSED'}"
        print(
            f"{r['model']}: {r['speedup']:.2f}x faster than the naive loop (MAC bound {r['bound']:.2f}x){verdict}; "
            f"results {'match' if r['max_diff_pp'] <= 0.05 and r['kept_ok'] else 'DIFFER'} (<= 0.05 pp)"
        )
    print(
        f"\nwall {time.perf_counter() - start:.0f} s, load average after: {os.getloadavg()[0]:.2f} "
        "(a shared CPU makes timings noisy)"
    )


if __name__ == "__main__":
    main()
