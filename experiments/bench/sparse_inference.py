"""Benchmark: dense vs sparse (CSR) inference, and what ``pruning.unstructured.sparsify`` chooses.

Cases (Han et al. / Deep Compression): LeNet-300-100 with Han's per-layer densities
(fc1 8%, fc2 9%, fc3 26%): the whole model with every layer sparse vs dense, and the
model as ``sparsify`` leaves it; single layers the size of VGG-16's fc6 (25088x4096)
and fc7 (4096x4096) at 8% and 4% density; batch 1, 32 and 256 by default. Every
timing is the median of ``--repeats`` runs after warm-up, in one process. "dense" is
the faster of dense at ``--threads`` and at 1 thread (so sparse is not credited for
avoiding thread contention); "sparse" likewise. The ratio is dense / sparse;
``chosen`` is what ``sparsify`` (min speedup 1.2x) keeps. Paper target: sparse >= 3x
faster at batch 1 on fc6/fc7 (Deep Compression's CPU figure); at large batches sparse
was slower there.

    python -m experiments.bench.sparse_inference --threads 2 --repeats 7
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
from collections import OrderedDict

import torch
from torch import nn

import pruning
from pruning.unstructured import time_ms

LENET_KEEP = {"fc1": 0.08, "fc2": 0.09, "fc3": 0.26}


def lenet_300_100() -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(784, 300),
            relu1=nn.ReLU(),
            fc2=nn.Linear(300, 100),
            relu2=nn.ReLU(),
            fc3=nn.Linear(100, 10),
        )
    )


def pruned_linear(n_in: int, n_out: int, keep: float) -> nn.Sequential:
    layer = nn.Linear(n_in, n_out)
    pruning.prune_weights(layer, sparsity=1.0 - keep, include="weight")
    return nn.Sequential(OrderedDict(fc=layer)).eval()


def layer_rows(label: str, model: nn.Module, keep: float, batches: list[int], repeats: int) -> list[dict]:
    rows = []
    n_in = model.fc.in_features
    for batch in batches:
        x = torch.randn(batch, n_in)
        trial = nn.Sequential(OrderedDict(fc=model.fc))  # sparsify swaps in place: keep the dense one
        choice = pruning.unstructured.sparsify(trial, x, repeats=repeats, max_density=1.0)["fc"]
        rows.append(
            dict(
                case=label,
                density=keep,
                batch=batch,
                dense_ms=choice.dense_ms,
                sparse_ms=choice.sparse_ms,
                ratio=choice.speedup,
                threads=choice.num_threads,
                chosen=choice.chosen,
            )
        )
    return rows


def best_ms(model: nn.Module, x: torch.Tensor, repeats: int) -> float:
    """Median time at the process's thread count or at 1 thread, whichever is faster."""
    threads = torch.get_num_threads()
    times = [time_ms(model, x, repeats=repeats)]
    if threads > 1:
        torch.set_num_threads(1)
        try:
            times.append(time_ms(model, x, repeats=repeats))
        finally:
            torch.set_num_threads(threads)
    return min(times)


def lenet_rows(batches: list[int], repeats: int) -> list[dict]:
    rows = []
    base = lenet_300_100().eval()
    pruning.prune_weights(base, sparsity={k: 1.0 - v for k, v in LENET_KEEP.items()})
    for batch in batches:
        x = torch.randn(batch, 784)
        all_sparse = copy.deepcopy(base)
        pruning.unstructured.sparsify(all_sparse, x, min_speedup=0.0, repeats=2, max_density=1.0)
        chosen = copy.deepcopy(base)
        choices = pruning.unstructured.sparsify(chosen, x, repeats=repeats, max_density=1.0)
        dense_ms, sparse_ms = best_ms(base, x, repeats), best_ms(all_sparse, x, repeats)
        picked = ",".join(n for n, c in choices.items() if c.chosen == "sparse") or "all dense"
        rows.append(
            dict(
                case="LeNet-300-100 (model)",
                density=0.08,
                batch=batch,
                dense_ms=dense_ms,
                sparse_ms=sparse_ms,
                ratio=dense_ms / sparse_ms,
                threads=None,
                chosen=f"sparse: {picked}",
                chosen_ms=best_ms(chosen, x, repeats),
            )
        )
    return rows


def print_table(rows: list[dict]) -> None:
    head = (
        f"{'case':<24} {'density':>7} {'batch':>5} {'dense ms':>10} {'sparse ms':>10} "
        f"{'dense/sparse':>12} {'sp.threads':>10}  chosen"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        extra = f" ({r['chosen_ms']:.3f} ms)" if "chosen_ms" in r else ""
        print(
            f"{r['case']:<24} {r['density']:>7.0%} {r['batch']:>5} "
            f"{r['dense_ms']:>10.3f} {r['sparse_ms']:>10.3f} {r['ratio']:>11.2f}x "
            f"{str(r['threads']):>10}  {r['chosen']}{extra}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32, 256])
    parser.add_argument("--densities", type=float, nargs="+", default=[0.08, 0.04])
    parser.add_argument("--skip-fc6", action="store_true", help="skip the 25088x4096 layer (400 MB dense)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, threads={args.threads}, "
        f"mkl={torch.backends.mkl.is_available()}, load average before: {os.getloadavg()[0]:.2f}"
    )
    rows = lenet_rows(args.batches, args.repeats)
    layers = [("VGG-16 fc7 4096x4096", 4096, 4096)]
    if not args.skip_fc6:
        layers.insert(0, ("VGG-16 fc6 25088x4096", 25088, 4096))
    for label, n_in, n_out in layers:
        for keep in args.densities:
            rows += layer_rows(label, pruned_linear(n_in, n_out, keep), keep, args.batches, args.repeats)
    print_table(rows)
    print(f"load average after: {os.getloadavg()[0]:.2f} (on a shared machine multi-threaded timings are noisy)")
    for r in rows:
        if r["case"].startswith("VGG") and r["batch"] == 1:
            verdict = "meets" if r["ratio"] >= 3 else "MISSES"
            print(f"target >= 3x at batch 1: {r['case']} @ {r['density']:.0%}: {r['ratio']:.1f}x -> {verdict}")


if __name__ == "__main__":
    main()
