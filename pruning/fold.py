"""BatchNorm folding: merge an eval-mode BatchNorm into the conv/linear it directly follows.

For ``y = Wx + b`` followed by BN(gamma, beta, mean mu, variance var, eps), per output
channel: ``W' = W * gamma / sqrt(var + eps)`` and
``b' = (b - mu) * gamma / sqrt(var + eps) + beta``. "Directly follows" is decided on the
torch.fx graph (fallback: consecutive children of plain ``nn.Sequential`` containers):
the conv/linear output must feed only that BN, and each module must be called once.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.utils import parametrize

from pruning.evaluation import eval_mode, hooked_forward

_PRODUCERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def fold_batchnorm(model: nn.Module, example_inputs: Any, *, inplace: bool = False, check: bool = True) -> nn.Module:
    """Return ``model`` (a copy unless ``inplace``) with foldable BNs merged and replaced
    by ``nn.Identity``. With ``check``, the outputs on ``example_inputs`` are compared to
    the original's and a mismatch raises instead of returning a wrong model.
    """
    pairs = foldable_pairs(model, example_inputs)
    target = model if inplace else copy.deepcopy(model)
    reference = _run(model, example_inputs) if check and pairs else None
    for producer_name, bn_name in pairs:
        _fold_into(target.get_submodule(producer_name), target.get_submodule(bn_name))
        parent_name, _, child = bn_name.rpartition(".")
        setattr(target.get_submodule(parent_name), child, nn.Identity())
    if reference is not None:
        _check_same(reference, _run(target, example_inputs))
    return target


def foldable_pairs(model: nn.Module, example_inputs: Any) -> list[tuple[str, str]]:
    """(producer, batchnorm) module names that :func:`fold_batchnorm` would fold."""
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    try:
        graph_module = torch.fx.symbolic_trace(model)
    except Exception:  # untraceable forward (data-dependent control flow): use Sequential order
        return _sequential_pairs(model, inputs)
    try:
        with eval_mode(graph_module), torch.no_grad():
            ShapeProp(graph_module).propagate(*inputs)
    except Exception:
        pass  # without shapes, Linear->BN pairs are skipped (the BN dim could differ)
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph_module.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph_module.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), _NORMS):
            continue
        if len(node.args) != 1 or node.kwargs or not isinstance(node.args[0], torch.fx.Node):
            continue
        source = node.args[0]
        if source.op != "call_module" or len(source.users) != 1:
            continue  # the conv output also goes elsewhere: folding would change that path
        if calls[source.target] != 1 or calls[node.target] != 1:
            continue
        meta = node.meta.get("tensor_meta")
        rank = len(meta.shape) if meta is not None and hasattr(meta, "shape") else None
        if _compatible(modules[source.target], modules[node.target], node.target, rank):
            pairs.append((source.target, node.target))
    return pairs


def _sequential_pairs(model: nn.Module, inputs: tuple) -> list[tuple[str, str]]:
    ranks: dict[str, int] = {}

    def record(name: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            ranks[name] = args[0].dim()

        return hook

    hooked_forward(model, inputs, [(m, record(n)) for n, m in model.named_modules() if isinstance(m, _NORMS)])
    uses: dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        uses[id(m)] = uses.get(id(m), 0) + 1
    pairs = []
    for name, seq in model.named_modules():
        if type(seq) is not nn.Sequential:
            continue
        children = list(seq.named_children())
        for (pname, producer), (bname, bn) in zip(children, children[1:]):
            full_p, full_b = (f"{name}.{pname}" if name else pname), (f"{name}.{bname}" if name else bname)
            if uses[id(producer)] == 1 and uses[id(bn)] == 1 and full_b in ranks:
                if _compatible(producer, bn, full_b, ranks[full_b]):
                    pairs.append((full_p, full_b))
    return pairs


def _compatible(producer: nn.Module, bn: nn.Module, bn_name: str, bn_input_rank: int | None) -> bool:
    if not isinstance(producer, _PRODUCERS) or parametrize.is_parametrized(producer):
        return False
    if bn.running_mean is None or bn.running_var is None:
        return False  # track_running_stats=False: BN always uses batch statistics
    if bn.training:
        raise ValueError(
            f"BatchNorm '{bn_name}' is in training mode; folding uses running statistics, "
            "so call model.eval() before fold_batchnorm"
        )
    channels = producer.out_features if isinstance(producer, nn.Linear) else producer.out_channels
    if channels != bn.num_features:
        return False
    if isinstance(producer, nn.Linear):
        return bn_input_rank == 2  # BN1d on (N, C, L) normalises dim 1, not the features
    return True


@torch.no_grad()
def _fold_into(producer: nn.Module, bn: nn.Module) -> None:
    """Fold ``bn``'s eval-mode affine transform into ``producer``'s weight and bias."""
    dtype = producer.weight.dtype
    weight = producer.weight.double()
    var, mean = bn.running_var.double(), bn.running_mean.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    bias = producer.bias.double() if producer.bias is not None else torch.zeros_like(var)
    producer.weight.copy_((weight * scale.reshape(-1, *[1] * (weight.dim() - 1))).to(dtype))
    new_bias = ((bias - mean) * scale + beta).to(dtype)
    if producer.bias is None:
        producer.bias = nn.Parameter(new_bias)
    else:
        producer.bias.copy_(new_bias)


def _run(model: nn.Module, example_inputs: Any) -> list[torch.Tensor]:
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)  # same dropout draws for the original and the folded model
        return _leaves(model(*inputs))


def _leaves(out: Any) -> list[torch.Tensor]:
    if torch.is_tensor(out):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [leaf for item in out for leaf in _leaves(item)]
    return []


def _check_same(reference: list[torch.Tensor], folded: list[torch.Tensor]) -> None:
    for ref, new in zip(reference, folded):
        if not ref.is_floating_point():
            continue
        scale = max(float(ref.abs().max()) if ref.numel() else 0.0, 1e-12)
        err = float((ref - new).abs().max()) / scale if ref.numel() else 0.0
        if err > 1e-3:
            raise RuntimeError(
                f"folding changed the model's output (max relative error {err:.2e}); "
                "a BN was probably not directly after its conv. Fold with check=False to "
                "inspect, and report the model."
            )
