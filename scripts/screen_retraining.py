"""Screen retraining recipes for Han's iterative pruning quickly (plain PyTorch, no Lightning).

Takes a trained baseline checkpoint (a file of the baseline cache, ``.cache/baselines/*.pt``,
printed by ``python run.py experiment=han2015_lenet300`` as "reusing cached checkpoint"),
prunes it in ``--rounds`` geometric steps to the preset's per-layer sparsities (or one
global sparsity) and retrains after each step with the given recipe, then prints the test
accuracy against the baseline's as one JSON line (also appended to ``--out``). It is a
screen, not a result: confirm a recipe with ``python run.py -m experiment=... seed=0,1,2``.

    python scripts/screen_retraining.py --ckpt .cache/baselines/<key>.pt --model lenet300 \\
        --opt adamw --lr 1e-3 --wd 0.01
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time

import torch
import torch.nn.functional as F

import pruning
from experiments.data import FashionMNISTDataModule
from experiments.models.registry import build_model

HAN_SPARSITY = {
    "lenet300": {"fc1.weight": 0.925, "fc2.weight": 0.91, "fc3.weight": 0.74},
    "lenet5": {"conv1.weight": 0.34, "conv2.weight": 0.88, "fc1.weight": 0.925, "fc2.weight": 0.81},
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="baseline checkpoint ({'state_dict': ...}, weights_only)")
    p.add_argument("--model", choices=sorted(HAN_SPARSITY), default="lenet300")
    p.add_argument("--name", default="recipe", help="label of the output line")
    p.add_argument("--seed", type=int, default=0, help="shuffling seed of the retraining")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--schedule", choices=("linear", "geometric", "cubic"), default="geometric")
    p.add_argument("--epochs", type=int, default=8, help="retraining epochs per round")
    p.add_argument("--final-epochs", type=int, default=0, help="extra retraining after the last round")
    p.add_argument("--opt", choices=("sgd", "adamw"), default="sgd")
    p.add_argument("--lr", type=float, default=0.01, help="peak lr of each round's cosine schedule")
    p.add_argument("--wd", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--distill", type=float, default=0.0, help="weight of distillation from the baseline")
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--global-sparsity", type=float, default=None, help="one global sparsity instead of Han's")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="results/screen_retraining.jsonl")
    return p.parse_args()


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        correct = sum(int((model(x[i : i + 2000]).argmax(1) == y[i : i + 2000]).sum()) for i in range(0, len(y), 2000))
    return correct / len(y)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = FashionMNISTDataModule(batch_size=args.batch_size, val_size=5000)
    data.setup()
    (xtr, ytr), (xva, yva), (xte, yte) = data.split("train"), data.split("val"), data.split("test")
    model = build_model(args.model, num_classes=10, in_channels=1, input_size=28)
    model.load_state_dict(torch.load(args.ckpt, weights_only=True)["state_dict"])
    teacher = copy.deepcopy(model).eval()
    base = accuracy(model, xte, yte)
    gen = torch.Generator().manual_seed(args.seed)
    masks: pruning.Masks | None = None

    def retrain(epochs: int) -> None:
        params = list(model.parameters())
        opt = (torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=args.wd) if args.opt == "sgd"
               else torch.optim.AdamW(params, lr=args.lr, weight_decay=args.wd))
        n = len(ytr)
        steps, step = epochs * math.ceil(n / args.batch_size), 0
        for _ in range(epochs):
            order = torch.randperm(n, generator=gen)
            for i in range(0, n, args.batch_size):
                idx = order[i : i + args.batch_size]
                x, y = xtr[idx], ytr[idx]
                for group in opt.param_groups:
                    group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * step / steps))
                out = model(x)
                loss = F.cross_entropy(out, y, label_smoothing=args.label_smoothing)
                if args.distill:
                    t = args.temperature
                    with torch.no_grad():
                        target = F.log_softmax(teacher(x) / t, 1)
                    kl = F.kl_div(F.log_softmax(out / t, 1), target, log_target=True, reduction="batchmean") * t * t
                    loss = (1 - args.distill) * loss + args.distill * kl
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
                masks.apply_(model)

    start, log = time.time(), []
    for r in range(args.rounds):
        if args.global_sparsity is not None:
            s = pruning.sparsity_schedule(r + 1, args.rounds, args.global_sparsity, kind=args.schedule)
            new = pruning.prune_weights(model, sparsity=s, scope="global")
        else:
            new = pruning.prune_weights(model, sparsity={
                k: pruning.sparsity_schedule(r + 1, args.rounds, v, kind=args.schedule)
                for k, v in HAN_SPARSITY[args.model].items()})
        if masks is not None:  # pruned weights never come back
            new = pruning.Masks({n: new[n] & masks[n] for n in new})
            new.apply_(model)
        masks = new
        retrain(args.epochs)
        log.append({"val": round(accuracy(model, xva, yva), 4), "test": round(accuracy(model, xte, yte), 4)})
    if args.final_epochs:
        retrain(args.final_epochs)
        log.append({"val": round(accuracy(model, xva, yva), 4), "test": round(accuracy(model, xte, yte), 4)})
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    ratio = sum(p.numel() for p in weights) / sum(int((p != 0).sum()) for p in weights)
    row = {"name": args.name, "model": args.model, "recipe": {k: v for k, v in vars(args).items() if k != "out"},
           "baseline_acc": base, "final_acc": log[-1]["test"], "delta_pp": round(100 * (log[-1]["test"] - base), 2),
           "weights_ratio": round(ratio, 2), "rounds": log, "wall_s": round(time.time() - start, 1)}
    print(json.dumps(row))
    from pathlib import Path

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
