"""Screen many Han prune/retrain recipes x seeds at once, each seed with its own baseline.

A screen, not a result: it uses plain PyTorch loops (no Lightning, Hydra or W&B) so a grid of
recipes runs in parallel worker processes on a GPU or on the CPU, then prints, per recipe,
the mean ± std over seeds of the test error change against each seed's own baseline.
Confirm a winner through the real pipeline (``python run.py -m experiment=... seed=0,1,2``).

A grid is a JSON file: a list of recipes, each a dict of the keys of ``DEFAULT`` that differ
(``{"name": "wd5e-4", "wd": 5e-4}``). Every run appends one JSON line to ``--out``.

    python scripts/screen_recipes.py --model lenet300 --grid grid.json --seeds 0,1,2 \\
        --device cuda --workers 12 --out results/screen_recipes.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pruning  # noqa: E402
from experiments.data import FashionMNISTDataModule  # noqa: E402
from experiments.models.registry import build_model  # noqa: E402
from experiments.module import distillation_loss  # noqa: E402

HAN_SPARSITY = {
    "lenet300": {"fc1.weight": 0.925, "fc2.weight": 0.91, "fc3.weight": 0.74},
    "lenet5": {"conv1.weight": 0.34, "conv2.weight": 0.88, "fc1.weight": 0.925, "fc2.weight": 0.81},
}
BASELINE_EPOCHS = {"lenet300": 20, "lenet5": 12}
DEFAULT = {
    "name": "preset",
    "sparsity": None,  # {param: sparsity}; None: Han's per-layer values
    "global_sparsity": None,  # one threshold over all weights instead
    "rounds": 3,
    "schedule": "geometric",
    "epochs": 8,  # retraining epochs per round
    "final_epochs": 0,  # extra retraining after the last round
    "opt": "sgd",
    "lr": 0.01,
    "wd": 1e-4,
    "momentum": 0.9,
    "batch_size": 128,
    "distill": 0.0,
    "temperature": 4.0,
    "label_smoothing": 0.0,
    "gradual": 0,  # > 0: one long run, pruning every `gradual` steps (cubic) over its first half
    "swa_epochs": 0,  # > 0: that many constant-lr epochs after the rounds, weights averaged per epoch
    "swa_lr": 0.005,
    "regrow": 0.0,  # > 0: in the last round, every `regrow_every` steps move this (cosine-decayed)
    "regrow_every": 100,  #   fraction of each layer's kept weights: drop the smallest, grow the largest |grad|
    "select": "last",  # last | best_val: the checkpoint of the last phase with the best val accuracy
    "baseline_epochs": None,  # None: the preset's
    "baseline_wd": 5e-4,
}


def load_data(root: str, device: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The pipeline's Fashion-MNIST splits (same normalisation and validation split), on ``device``."""
    data = FashionMNISTDataModule(root=root, val_size=5000, download=False, device=device)
    return {name: data.split(name) for name in ("train", "val", "test")}


def accuracy(model: torch.nn.Module, split: tuple[torch.Tensor, torch.Tensor]) -> float:
    x, y = split
    with torch.no_grad():
        correct = sum(int((model(x[i : i + 5000]).argmax(1) == y[i : i + 5000]).sum()) for i in range(0, len(y), 5000))
    return correct / len(y)


def train(
    model,
    data,
    *,
    epochs,
    lr,
    wd,
    opt="sgd",
    momentum=0.9,
    nesterov=False,
    batch_size=128,
    gen=None,
    masks=None,
    teacher=None,
    distill=0.0,
    temperature=4.0,
    label_smoothing=0.0,
    schedule="cosine",
    on_step=None,
    on_epoch=None,
) -> None:
    """SGD/AdamW with a per-step cosine (or constant) lr; masks re-applied after every step.

    ``masks`` is a one-element list so a hook (gradual pruning, regrowth) can swap them mid-run.
    """
    x_all, y_all = data["train"]
    params = list(model.parameters())
    optim = (
        torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=wd)
        if opt == "sgd"
        else torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    )
    n = len(y_all)
    steps, step = epochs * math.ceil(n / batch_size), 0
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen).to(x_all.device)
        model.train()
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            x, y = x_all[idx], y_all[idx]
            if schedule == "cosine":
                for group in optim.param_groups:
                    group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
            out = model(x)
            loss = F.cross_entropy(out, y, label_smoothing=label_smoothing)
            if distill:
                with torch.no_grad():
                    teacher_logits = teacher(x)
                loss = (1 - distill) * loss + distill * distillation_loss(out, teacher_logits, temperature)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            step += 1
            if on_step is not None:
                on_step(step, steps)
            if masks is not None and masks[0] is not None:
                masks[0].apply_(model)
        model.eval()
        if on_epoch is not None:
            on_epoch(epoch)


def new_model(model_name: str, device: str) -> torch.nn.Module:
    return build_model(model_name, num_classes=10, in_channels=1, input_size=28).to(device)


def run_baseline(model_name: str, seed: int, epochs: int, wd: float, data, device: str) -> dict:
    torch.manual_seed(seed)
    model = new_model(model_name, device)
    train(model, data, epochs=epochs, lr=0.05, wd=wd, nesterov=True, gen=torch.Generator().manual_seed(seed))
    return {
        "state": {k: v.cpu() for k, v in model.state_dict().items()},
        "test": accuracy(model, data["test"]),
        "val": accuracy(model, data["val"]),
    }


def prune_to(model, masks, model_name, r, step, total) -> pruning.Masks:
    """Masks at step ``step`` of ``total`` of the recipe's schedule; pruned weights never return."""
    if r["global_sparsity"] is not None:
        s = pruning.sparsity_schedule(step, total, r["global_sparsity"], kind=r["schedule"])
        new = pruning.prune_weights(model, sparsity=s, scope="global")
    else:
        final = r["sparsity"] or HAN_SPARSITY[model_name]
        new = pruning.prune_weights(
            model, sparsity={k: pruning.sparsity_schedule(step, total, v, kind=r["schedule"]) for k, v in final.items()}
        )
    if masks is not None:
        new = pruning.Masks({n: new[n] & masks[n] for n in new})
        new.apply_(model)
    return new


def run_recipe(model_name: str, r: dict, seed: int, base: dict, data, device: str) -> dict:
    torch.manual_seed(seed)
    model = new_model(model_name, device)
    model.load_state_dict(base["state"])
    teacher = copy.deepcopy(model).eval()
    gen = torch.Generator().manual_seed(seed)
    common = dict(
        lr=r["lr"],
        wd=r["wd"],
        opt=r["opt"],
        momentum=r["momentum"],
        batch_size=r["batch_size"],
        gen=gen,
        teacher=teacher,
        distill=r["distill"],
        temperature=r["temperature"],
        label_smoothing=r["label_smoothing"],
    )
    log: list[dict] = []
    best = {"val": -1.0, "state": None}

    def track(_epoch: int) -> None:
        val = accuracy(model, data["val"])
        if val > best["val"]:
            best["val"], best["state"] = val, copy.deepcopy(model.state_dict())

    if r["gradual"]:
        # one long cosine run; masks appear at the first pruning event and tighten at each
        epochs = r["rounds"] * r["epochs"] + r["final_epochs"]
        n_steps = epochs * math.ceil(len(data["train"][1]) / r["batch_size"])
        events = max(1, (n_steps // 2) // r["gradual"])
        holder: list[pruning.Masks | None] = [None]

        def on_step(step: int, _steps: int) -> None:
            if step % r["gradual"] == 0 and step // r["gradual"] <= events:
                holder[0] = prune_to(model, holder[0], model_name, r, step // r["gradual"], events)

        train(
            model,
            data,
            epochs=epochs,
            masks=holder,
            on_step=on_step,
            on_epoch=track if r["select"] == "best_val" else None,
            **common,
        )
        masks = holder[0]
        log.append({"val": accuracy(model, data["val"]), "test": accuracy(model, data["test"])})
    else:
        masks = None
        for i in range(r["rounds"]):
            masks = prune_to(model, masks, model_name, r, i + 1, r["rounds"])
            last = i == r["rounds"] - 1 and not r["final_epochs"]
            holder = [masks]
            grow = (
                make_regrow(model, holder, r["regrow"], r["regrow_every"])
                if r["regrow"] and i == r["rounds"] - 1
                else None
            )
            train(
                model,
                data,
                epochs=r["epochs"],
                masks=holder,
                on_step=grow,
                on_epoch=track if (last and r["select"] == "best_val") else None,
                **common,
            )
            masks = holder[0]
            log.append({"val": accuracy(model, data["val"]), "test": accuracy(model, data["test"])})
        if r["final_epochs"]:
            train(
                model,
                data,
                epochs=r["final_epochs"],
                masks=[masks],
                on_epoch=track if r["select"] == "best_val" else None,
                **common,
            )
            log.append({"val": accuracy(model, data["val"]), "test": accuracy(model, data["test"])})
    if r["swa_epochs"]:
        avg = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
        count = [0]

        def accumulate(_epoch: int) -> None:
            count[0] += 1
            for k, v in model.state_dict().items():
                avg[k] += (v - avg[k]) / count[0]

        train(
            model,
            data,
            epochs=r["swa_epochs"],
            masks=[masks],
            schedule="constant",
            on_epoch=accumulate,
            **{**common, "lr": r["swa_lr"]},
        )
        model.load_state_dict(avg)
        log.append({"val": accuracy(model, data["val"]), "test": accuracy(model, data["test"])})
    elif r["select"] == "best_val" and best["state"] is not None:
        model.load_state_dict(best["state"])
        log.append({"val": accuracy(model, data["val"]), "test": accuracy(model, data["test"]), "selected": True})
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    ratio = sum(p.numel() for p in weights) / sum(int((p != 0).sum()) for p in weights)
    final = log[-1]["test"]
    return {
        "final_test": final,
        "final_val": log[-1]["val"],
        "delta_pp": round(100 * (base["test"] - final), 3),
        "weights_ratio": round(ratio, 3),
        "rounds": log,
    }


def make_regrow(model: torch.nn.Module, holder: list, alpha: float, every: int):
    """RigL-style mask updates at constant sparsity (Evci et al. 2020), on the last round only."""
    params = dict(model.named_parameters())

    @torch.no_grad()
    def on_step(step: int, steps: int) -> None:
        end = 0.75 * steps
        if step % every or step > end:
            return
        frac = alpha / 2 * (1 + math.cos(math.pi * step / end))
        new = {}
        for name, mask in holder[0].items():
            p, g = params[name], params[name].grad
            flat = mask.flatten().clone()
            k = int(frac * int(flat.sum()))
            if k == 0 or g is None:
                new[name] = mask
                continue
            inf = torch.tensor(float("inf"), device=p.device)
            drop = torch.topk(torch.where(flat, p.abs().flatten(), inf), k, largest=False).indices
            grow = torch.topk(torch.where(flat, -inf, g.abs().flatten()), k).indices
            flat[drop] = False
            flat[grow] = True
            new[name] = flat.view_as(mask)
        holder[0] = pruning.Masks(new)

    return on_step


def worker(device: str, jobs, results, args) -> None:
    torch.set_num_threads(args.threads)
    data = load_data(args.data, device)
    while True:
        job = jobs.get()
        if job is None:
            return
        kind, payload = job
        start = time.time()
        try:
            if kind == "baseline":
                seed, epochs, wd = payload
                out = run_baseline(args.model, seed, epochs, wd, data, device)
                torch.save(out, Path(args.tmp) / f"base_{seed}_{epochs}_{wd}.pt")
                results.put(("baseline", payload, {"test": out["test"], "val": out["val"]}, time.time() - start))
            else:
                recipe, seed = payload
                bkey = (seed, recipe["baseline_epochs"] or BASELINE_EPOCHS[args.model], recipe["baseline_wd"])
                base = torch.load(Path(args.tmp) / f"base_{bkey[0]}_{bkey[1]}_{bkey[2]}.pt", weights_only=True)
                if base["test"] < 0.5:
                    raise RuntimeError(f"the baseline of seed {seed} diverged (test accuracy {base['test']:.3f})")
                out = run_recipe(args.model, recipe, seed, base, data, device)
                out.update(baseline_test=base["test"], device=device)
                results.put(("recipe", payload, out, time.time() - start))
        except Exception as exc:  # a failing recipe must not stop the screen
            results.put(("error", payload, repr(exc), time.time() - start))


def summarize(paths: list[str], plot: str | None = None) -> None:
    """Mean ± std over seeds of each (model, recipe) in screen output files; optionally a plot."""
    groups: dict[tuple[str, str], dict[tuple, dict]] = {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            row = json.loads(line)
            if row["baseline_test"] < 0.5:  # a diverged baseline says nothing about the recipe
                continue
            runs = groups.setdefault((row["model"], row["recipe"]["name"]), {})
            runs[(row["seed"], row.get("device"), row["baseline_test"])] = row  # a repeated run counts once
    table = []
    for (model, name), runs in groups.items():
        d = [r["delta_pp"] for r in runs.values()]
        ratio = next(iter(runs.values()))["weights_ratio"]
        table.append((model, name, d, statistics.mean(d), statistics.stdev(d) if len(d) > 1 else 0.0, ratio))
    table.sort(key=lambda t: (t[0], t[3]))
    print(f"{'model':<9} {'recipe':<32} {'n':>2}  {'err change pp':>15}  {'min':>6} {'max':>6}  weights")
    for model, name, d, mean, sd, ratio in table:
        print(f"{model:<9} {name:<32} {len(d):>2}  {mean:+7.3f} ± {sd:.3f}  {min(d):+6.2f} {max(d):+6.2f}  {ratio}x")
    if plot:
        plot_summary(table, plot)


def plot_summary(table: list[tuple], path: str) -> None:
    """One panel per model: each recipe's seeds as dots, mean ± std as a bar, the 0.1 pp bound."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({t[0] for t in table})
    heights = [sum(t[0] == m for t in table) for m in models]
    fig, axes = plt.subplots(
        len(models),
        1,
        figsize=(8, 0.28 * sum(heights) + 1.5 * len(models)),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for ax, model in zip(axes[:, 0], models):
        rows = [t for t in table if t[0] == model][::-1]
        for y, (_, name, d, mean, sd, _) in enumerate(rows):
            ax.errorbar(mean, y, xerr=sd, fmt="o", color="C0", capsize=3)
            ax.plot(d, [y] * len(d), ".", color="0.6", zorder=0)
        ax.set_yticks(range(len(rows)), [f"{t[1]} (n={len(t[2])})" for t in rows], fontsize=7)
        ax.axvline(0.1, color="C3", ls="--", lw=1, label="target: +0.1 pp")
        ax.axvline(0.0, color="0.3", lw=0.8)
        ax.set_title(f"{model} on Fashion-MNIST, ~12x fewer weights: test error change vs own baseline", fontsize=9)
        ax.set_xlabel("error change (pp): seeds (grey), mean ± std (blue)", fontsize=8)
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--summarize", nargs="+", metavar="JSONL", help="only print the mean ± std table of these outputs")
    p.add_argument("--plot", metavar="PNG", help="with --summarize: also plot the table to this file")
    p.add_argument("--model", choices=sorted(HAN_SPARSITY), default="lenet300")
    p.add_argument("--grid", help="JSON file: a list of recipes (keys of DEFAULT that differ)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workers", type=int, default=2, help="worker processes on --device")
    p.add_argument("--cpu-workers", type=int, default=0, help="extra worker processes on the CPU")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--data", default=None, help="folder with the Fashion-MNIST IDX files (default: as the pipeline looks)"
    )
    p.add_argument("--tmp", default="/tmp/screen_recipes")
    p.add_argument("--out", default="results/screen_recipes.jsonl")
    p.add_argument("--budget-s", type=float, default=1e9, help="stop handing out jobs after this many seconds")
    args = p.parse_args()
    if args.summarize:
        return summarize(args.summarize, args.plot)
    if not args.grid:
        p.error("--grid is required (or --summarize)")
    Path(args.tmp).mkdir(parents=True, exist_ok=True)
    recipes = [{**DEFAULT, **r} for r in json.loads(Path(args.grid).read_text())]
    unknown = {k for r in recipes for k in r} - set(DEFAULT)
    if unknown:
        raise SystemExit(f"unknown recipe keys {sorted(unknown)}; allowed: {sorted(DEFAULT)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    ctx = mp.get_context("spawn")
    jobs, results = ctx.Queue(), ctx.Queue()
    devices = [args.device] * args.workers + ["cpu"] * args.cpu_workers
    procs = [ctx.Process(target=worker, args=(d, jobs, results, args), daemon=True) for d in devices]
    for proc in procs:
        proc.start()
    start = time.time()
    bases = sorted(
        {(s, r["baseline_epochs"] or BASELINE_EPOCHS[args.model], r["baseline_wd"]) for r in recipes for s in seeds}
    )
    for b in bases:
        jobs.put(("baseline", b))
    base_acc = {}
    for _ in bases:
        kind, payload, out, wall = results.get()
        print(f"[{time.time() - start:6.0f}s] baseline {payload}: {out} ({wall:.0f}s)", flush=True)
        base_acc[tuple(payload)] = out
    order = [(r, s) for s in seeds for r in recipes]  # all recipes for seed 0 first: partial screens stay comparable
    for job in order:
        jobs.put(("recipe", job))
    for _ in procs:
        jobs.put(None)
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    by_name: dict[str, list[float]] = {}
    for _ in order:
        kind, payload, out, wall = results.get()
        recipe, seed = payload
        if kind == "error":
            print(f"ERROR {recipe['name']} seed {seed}: {out}", flush=True)
            continue
        row = {"model": args.model, "seed": seed, "recipe": recipe, **out, "wall_s": round(wall, 1)}
        with open(out_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        by_name.setdefault(recipe["name"], []).append(out["delta_pp"])
        print(
            f"[{time.time() - start:6.0f}s] {recipe['name']:<28} seed {seed}: err {out['delta_pp']:+.2f} pp "
            f"({out['baseline_test']:.4f} -> {out['final_test']:.4f}, {out['weights_ratio']}x, {wall:.0f}s)",
            flush=True,
        )
        if time.time() - start > args.budget_s:
            print("budget reached: stopping", flush=True)
            break
    for proc in procs:
        proc.terminate()
    print("\nrecipe                        n   err change pp (mean ± std)   max")
    for name, deltas in sorted(by_name.items(), key=lambda kv: statistics.mean(kv[1])):
        sd = statistics.stdev(deltas) if len(deltas) > 1 else 0.0
        print(f"{name:<28} {len(deltas):2d}   {statistics.mean(deltas):+.3f} ± {sd:.3f}          {max(deltas):+.2f}")
    os._exit(0)


if __name__ == "__main__":
    main()
