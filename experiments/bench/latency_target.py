"""Benchmark: pruning to a measured latency target (``pruning.prune_for_latency``) vs uniform L1.

For each model and batch size: the latency table is built from scratch (every group's layers
timed on its grid of channel counts; ``table s``; ``--quick`` skips that and times only the
shapes the search visits), its prediction is checked against measured
latency at two uniform cuts (``pred err``: predicted / measured latency ratio - 1), then for
each target the latency-aware search prunes a copy of the dense model, and the measured
ratio (``pruning.compare_latency``: dense and pruned interleaved, 95% CI) is compared with the
target (``err`` = measured / target - 1; a hit is within +-5%). As the reference, uniform L1
pruning (one ratio in every group, the library's default) is cut to the same MAC ratio and
timed the same way: the latency/MAC gap (latency ratio / MAC ratio) of both shows how much of
the MAC reduction each turns into speed.

Models are built untrained (latency does not depend on the weights) for 32x32 RGB inputs:
``resnet56`` and ``mobilenetv2_cifar`` from the zoo, ``tv:resnet18`` from torchvision.

    python -m experiments.bench.latency_target                       # 3 models, batch 1 and 32
    python -m experiments.bench.latency_target --quick               # resnet56, batch 1, one target
    python -m experiments.bench.latency_target --models tv:resnet18 --batches 32 --targets 0.5 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Sequence

import torch
from torch import nn

import pruning
from experiments.models import build_model
from experiments.models.torchvision_models import torchvision_model
from pruning.latency import check_target, forget_timings


def build(name: str, input_size: int) -> nn.Module:
    """A zoo model by name, or ``tv:<torchvision name>``; untrained, 10 classes, 3 input channels."""
    kw = dict(num_classes=10, in_channels=3, input_size=input_size)
    if name.startswith("tv:"):
        return torchvision_model(name=name[3:], **kw)
    return build_model(name, **kw)


def uniform_at_macs(model: nn.Module, x: torch.Tensor, mac_ratio: float) -> tuple[nn.Module, float]:
    """Uniform L1 pruning (one ratio everywhere) whose MAC ratio is closest to ``mac_ratio`` (bisection)."""
    dense = pruning.count(model, x).macs

    def cut(r: float) -> tuple[nn.Module, float]:
        m = copy.deepcopy(model)
        if r > 0:
            pruning.prune_filters(m, x, r)
        return m, pruning.count(m, x).macs / dense

    lo, hi = 0.0, 0.95
    best = cut(0.0)
    for _ in range(12):
        mid = (lo + hi) / 2
        m, macs = cut(mid)
        if abs(macs - mac_ratio) < abs(best[1] - mac_ratio):
            best = (m, macs)
        lo, hi = (mid, hi) if macs > mac_ratio else (lo, mid)
    return best


def bench_one(name: str, batch: int, targets: Sequence[float], args: argparse.Namespace) -> list[dict]:
    torch.manual_seed(args.seed)
    model = build(name, args.input_size).eval()
    x = torch.randn(1, 3, args.input_size, args.input_size)
    forget_timings()  # the table is built from scratch: its build time is honest
    table = pruning.latency.latency_table(
        model, x, batch, args.grid, threads=args.threads, calibrate_s=args.max_time_s, build=not args.quick
    )
    check = [] if args.quick else table.check(max_time_s=args.max_time_s)
    pred_err = max((abs(r["ratio_error"]) for r in check), default=float("nan"))
    dense_macs = pruning.count(model, x).macs
    rows = []
    for target in targets:
        row = {"model": name, "batch": batch, "target": target, "table_s": table.build_seconds, "pred_err": pred_err}
        pruned = copy.deepcopy(model)
        try:
            result = pruning.prune_for_latency(
                pruned, x, target, batch, table=table, threads=args.threads, max_time_s=args.max_time_s
            )
        except ValueError as e:
            row["note"] = str(e).split(";")[1].strip() if ";" in str(e) else str(e)
            rows.append(row)
            continue
        macs = pruning.count(pruned, x).macs / dense_macs
        uniform, umacs = uniform_at_macs(model, x, macs)
        ucmp = pruning.compare_latency(model, uniform, x, batch, max_time_s=args.max_time_s, threads=args.threads)
        cmp = result.comparison
        row.update(
            measured=cmp.ratio,
            ci=(cmp.ci_low, cmp.ci_high),
            err=cmp.ratio / target - 1,
            hit=result.hit,
            passes=len(result.passes),
            search_s=result.search_seconds,
            macs=macs,
            gap=cmp.ratio / macs,
            u_lat=ucmp.ratio,
            u_macs=umacs,
            u_gap=ucmp.ratio / umacs,
            device=cmp.device,
            threads=cmp.threads,
        )
        rows.append(row)
        print(f"  {name} b{batch} target {target}: measured {cmp.ratio:.3f}", file=sys.stderr, flush=True)
    return rows


def print_table(rows: list[dict]) -> None:
    head = (
        f"{'model':18s} {'batch':>5s} {'target':>6s} {'measured':>8s} {'95% CI':>13s} {'err':>7s} {'hit':>4s} "
        f"{'passes':>6s} {'table s':>8s} {'search s':>8s} {'pred err':>8s} | {'MACs':>5s} {'lat/MAC':>7s} | "
        f"{'uniform lat':>11s} {'MACs':>5s} {'lat/MAC':>7s}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        if "measured" not in r:
            print(f"{r['model']:18s} {r['batch']:5d} {r['target']:6.2f}  {r.get('note', '')}")
            continue
        ci = f"{r['ci'][0]:.3f}-{r['ci'][1]:.3f}"
        print(
            f"{r['model']:18s} {r['batch']:5d} {r['target']:6.2f} {r['measured']:8.3f} {ci:>13s} {r['err']:+7.1%} "
            f"{'yes' if r['hit'] else 'no':>4s} {r['passes']:6d} {r['table_s']:8.1f} {r['search_s']:8.1f} "
            f"{'-' if r['pred_err'] != r['pred_err'] else format(r['pred_err'], '.1%'):>8s} | {r['macs']:5.3f} {r['gap']:7.2f} | {r['u_lat']:11.3f} {r['u_macs']:5.3f} "
            f"{r['u_gap']:7.2f}"
        )
    done = [r for r in rows if "measured" in r]
    if done:
        hits = sum(r["hit"] for r in done)
        mean_err = sum(abs(r["err"]) for r in done) / len(done)
        print(
            f"\ntargets hit (within +-5%): {hits} of {len(done)} reachable ({len(rows) - len(done)} unreachable); "
            f"mean |err| {mean_err:.1%}; latency/MAC gap: latency-aware {sum(r['gap'] for r in done) / len(done):.2f}"
            f" vs uniform L1 {sum(r['u_gap'] for r in done) / len(done):.2f} (ours / uniform latency at equal MACs: "
            f"{sum(r['measured'] / r['u_lat'] for r in done) / len(done):.2f})"
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet56,mobilenetv2_cifar,tv:resnet18", help="comma-separated")
    parser.add_argument("--batches", default="1,32", help="comma-separated batch sizes")
    parser.add_argument("--targets", default="0.6,0.75", help="comma-separated latency ratios in (0, 1)")
    parser.add_argument("--grid", type=int, default=8, help="channel multiple of the table's grid")
    parser.add_argument("--input-size", type=int, default=32, help="side of the square input images")
    parser.add_argument("--threads", type=int, default=2, help="torch threads while timing")
    parser.add_argument("--max-time-s", type=float, default=20.0, help="time cap of each latency comparison")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="resnet56, batch 1, target 0.7, 5 s caps, no table check")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.batches, args.targets, args.max_time_s = "resnet56", "1", "0.7", min(args.max_time_s, 5.0)
    targets = [float(t) for t in args.targets.split(",")]
    for t in targets:
        check_target(t)
    print(
        f"# {pruning.latency.cpu_model()}, {args.threads} thread(s), torch {torch.__version__}, "
        f"{args.input_size}x{args.input_size} inputs, grid {args.grid}"
    )
    start = time.perf_counter()
    rows = []
    for name in args.models.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            rows += bench_one(name, batch, targets, args)
    print_table(rows)
    print(f"\n({time.perf_counter() - start:.0f} s in all)")


if __name__ == "__main__":
    main()
