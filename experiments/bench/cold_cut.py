"""Plan and cut one model with one tool in a fresh process: the worker of the cold benchmark.

``python -m experiments.bench.cold_cut --tool ours --source timm --model resnet10t --size 32``
prints one JSON line. The process sets torch to one thread, builds the model (seed 0, eval
mode, untrained), finds its classifier (the last conv/linear layer run), imports the tool,
collects garbage, and then times only the plan and the cut:

* ours: ``pruning.prune_filters(model, x, ratio, criterion="l1", ignore=(classifier,))``:
  the trace, the groups, the scores and the cut, and the forward pass on the cut model that
  ``prune_filters`` runs before it returns;
* Torch-Pruning: ``tp.pruner.BasePruner(model, x, importance=MagnitudeImportance(p=1),
  pruning_ratio=ratio, ignored_layers=[classifier], global_pruning=False)`` and ``step()``.
  Its pruned model is run forward after the clock stops: a model that does not run is a
  failure, not a cut.

Status: ``cut`` (the pruned model runs), ``refused`` (ours: ``ChannelMappingError`` naming
the module, or nothing prunable), ``failed`` (any other error, or a cut model whose forward
fails) or ``timeout`` (the plan and cut passed ``--timeout`` seconds: ``SIGALRM`` stops it).
"""

from __future__ import annotations

import argparse
import gc
import json
import signal
import sys
import time
import warnings
from collections.abc import Sequence

SIZES = (32, 64, 96, 128, 160, 192, 224, 256, 299, 331)
TORCHVISION_SKIP = ("vit_", "swin_", "maxvit_")  # transformers: not CNNs


class Timeout(BaseException):
    """The plan and cut ran past the time limit (a BaseException: no `except Exception` swallows it)."""


def build(source: str, name: str, size: int, kwargs: dict):
    """(model in eval mode, a batch-1 example input); ``size`` 0: the smallest of ``SIZES``
    that runs the model (torchvision, zoo)."""
    import torch

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if source == "timm":
            import timm

            model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
        elif source == "tv":
            import torchvision

            model = torchvision.models.get_model(name, weights=None, **kwargs)
        else:
            from experiments.models import MODELS

            model = MODELS[name](num_classes=10, in_channels=3, input_size=size or 32, **kwargs)
    model.eval()
    for s in (size,) if size else SIZES:
        x = torch.randn(1, 3, s, s)
        try:
            with torch.no_grad():
                model(x)
            return model, x
        except Exception:
            if size:
                raise
    raise RuntimeError(f"{name}: runs at none of the sizes {SIZES}")


def classifier(model, x) -> str:
    """Name of the last conv/linear layer run in a forward pass: the layer both tools leave uncut."""
    import torch
    from torch import nn

    names = {m: n for n, m in model.named_modules()}
    order: list[str] = []
    hooks = [
        m.register_forward_hook(lambda mod, a, o: order.append(names[mod]))
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return order[-1]


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def run(tool: str, source: str, name: str, size: int, kwargs: dict, ratio: float, timeout: float) -> dict:
    """One row: model, tool, input, status, seconds (plan and cut: wall and CPU time of this
    process), params before and after."""
    import torch

    torch.set_num_threads(1)
    row: dict = {"model": name, "source": source, "tool": tool}
    model, x = build(source, name, size, kwargs)
    row["input"] = x.shape[-1]
    ignore = classifier(model, x)
    row["params"] = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    if tool == "ours":
        import pruning

        def plan_and_cut():
            return pruning.prune_filters(model, x, ratio, criterion="l1", ignore=(ignore,))

        refusals: tuple = (pruning.ChannelMappingError,)
    else:
        import torch_pruning as tp

        def plan_and_cut():
            pruner = tp.pruner.BasePruner(
                model,
                x,
                importance=tp.importance.MagnitudeImportance(p=1),
                pruning_ratio=ratio,
                ignored_layers=[model.get_submodule(ignore)],
                global_pruning=False,
            )
            pruner.step()

        refusals = ()
    row["import_s"] = time.perf_counter() - t0

    def alarm(signum, frame):
        raise Timeout

    gc.collect()
    signal.signal(signal.SIGALRM, alarm)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            signal.setitimer(signal.ITIMER_REAL, timeout)
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                out = plan_and_cut()
            finally:
                seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
                signal.setitimer(signal.ITIMER_REAL, 0)
        row.update(seconds=seconds, cpu_s=cpu)
        with torch.no_grad():
            model(x)
    except Timeout:
        return dict(row, status="timeout", seconds=timeout, detail=f"plan and cut passed {timeout:g} s")
    except refusals as err:
        return dict(row, status="refused", seconds=seconds, cpu_s=cpu, detail=_first_line(err))
    except Exception as err:
        stage = "forward after the cut" if "seconds" in row else "plan and cut"
        return dict(row, status="failed", seconds=seconds, detail=f"{stage}: {_first_line(err)}")
    after = sum(p.numel() for p in model.parameters())
    if tool == "ours" and not len(out):
        return dict(row, status="refused", params_after=after, detail="nothing prunable")
    return dict(row, status="cut", params_after=after, detail="")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tool", choices=("ours", "tp"), required=True)
    parser.add_argument("--source", choices=("timm", "tv", "zoo"), required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--size", type=int, default=0, help="input side (0: the smallest that runs)")
    parser.add_argument("--kwargs", default="{}", help="JSON: extra arguments of the model builder")
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds for the plan and cut")
    args = parser.parse_args(argv)
    row = run(args.tool, args.source, args.model, args.size, json.loads(args.kwargs), args.ratio, args.timeout)
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    sys.exit(main())
