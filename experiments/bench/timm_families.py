"""timm's CNN families: the checked-in list of one model per family, and a probe that prunes each.

Family rule. A family is a timm model module (``timm.models.<module>``, the file that defines
an architecture and its variants: ``resnet``, ``efficientnet``, ``byobnet``...). Its
representative is its smallest model by parameter count (counted on the meta device, so
nothing is allocated or initialised), leaving out timm's ``test_*`` configurations (not
published architectures). Families whose every block mixes tokens by self-attention or
an MLP over patch embeddings are left out (``TRANSFORMER_MODULES``: ViT and its relatives,
Swin, MLP-Mixer...); CNNs with attention blocks (CoAtNet, MobileViT, EfficientFormer,
LowFormer...) stay. A module timm adds later counts as a CNN family until it is listed
there. ``VARIANTS`` adds models whose layers the smallest of their family does not use
(blur pooling, ECA, global context, TF "same" padding, 64-group convs...), each with the
reason. The representative is the smallest model that runs at 64x64 (``SMALL_INPUT``) or
less where the smallest needs more (a HaloNet needs 256). For every model the list records
the smallest square input (of ``SIZES``) that runs it, with ``img_size`` passed to timm for
models built for one input size, and ``test_kwargs`` where the test builds it narrower or
shallower (``TEST_KWARGS``, same blocks) to stay fast.

The probe prunes every listed model at ratio 0.3 (L1, eval mode, float32, batch 1) and
reports ``ok`` (cut, forward runs), ``refused`` (``ChannelMappingError``, naming the module)
or ``broken`` (any other error, or a cut model whose forward fails), with the parameters
removed, whether the engine calls the cut exact, and the seconds taken.

    python -m experiments.bench.timm_families --write      # regenerate tests/pruning/timm_families.json
    python -m experiments.bench.timm_families              # probe every listed model
    python -m experiments.bench.timm_families --models resnet10t,tf_mixnet_s --ratio 0.5
    python -m experiments.bench.timm_families --models ecaresnet26t --approximate eca
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

import pruning

LIST_PATH = Path(__file__).resolve().parents[2] / "tests" / "pruning" / "timm_families.json"
SIZES = (32, 64, 96, 128, 160, 192, 224, 256, 299, 331)
NUM_CLASSES = 10

TRANSFORMER_MODULES = frozenset(
    """beit cait coat convit crossvit davit deepseek_vit deit eva gcvit gemma4_vit hiera hieradet_sam2
    levit mlp_mixer mvitv2 naflexvit nest pit pvt_v2 qwen3_vit sequencer swin_transformer
    swin_transformer_v2 swin_transformer_v2_cr tnt twins vision_transformer vision_transformer_hybrid
    vision_transformer_relpos vision_transformer_sam volo xcit""".split()
)

SMALL_INPUT = 64
# The test (not the probe) builds these narrower or shallower, with the same blocks, to stay fast.
TEST_KWARGS = {
    "vgg11": {"mlp_ratio": 1 / 64},  # the 4096-wide 7x7 ConvMlp head alone holds 100M weights
    "nasnetalarge": {"stem_size": 16, "num_features": 192},
    "senet154": {"layers": [1, 1, 1, 1]},
}
VARIANTS = {
    "resnetblur18": "BlurPool2d: a fixed depthwise conv2d (anti-aliased downsampling)",
    "densenetblur121d": "BlurPool2d in a DenseNet stem",
    "ecaresnet26t": "ECA: a Conv1d across channels (its channels kept unless approximate=('eca',))",
    "seresnext26t_32x4d": "squeeze-excitation gates and 32-group convs",
    "senet154": "64-group 3x3 convs with two inputs per group (cut to one, they look depthwise)",
    "gcresnext26ts": "GlobalContext: a softmax attention map applied with matmul",
    "bat_resnext26ts": "BAT (bilinear attention transform): matmul with fixed-size maps",
    "tf_mixnet_s": "TF 'same' padding (Conv2dSame pads in forward) and mixed kernel sizes",
    "tf_efficientnet_lite0": "TF 'same' padding in an EfficientNet",
}


# ---- the list ------------------------------------------------------------------------------
def _timm():
    import timm

    return timm


def module_of(name: str) -> str:
    """The timm module (family) that defines model ``name``: ``resnet18`` -> ``resnet``."""
    return _timm().models.model_entrypoint(name).__module__.rpartition(".")[2]


def param_count(name: str, **kwargs) -> int:
    """Parameters of timm model ``name`` (built on the meta device: no memory, no init)."""
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _timm().create_model(name, pretrained=False, num_classes=NUM_CLASSES, **kwargs)
    return sum(p.numel() for p in model.parameters())


def families() -> dict[str, list[str]]:
    """``{family (timm module): its models}`` for the CNN families, ``test_*`` models left out."""
    out: dict[str, list[str]] = {}
    for name in _timm().list_models():
        family = module_of(name)
        if family in TRANSFORMER_MODULES or name.startswith("test_"):
            continue
        out.setdefault(family, []).append(name)
    return dict(sorted(out.items()))


def build(name: str, kwargs: dict | None = None, seed: int = 0) -> nn.Module:
    """timm model ``name`` with ``NUM_CLASSES`` outputs, untrained (no network), eval mode."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _timm().create_model(name, pretrained=False, num_classes=NUM_CLASSES, **(kwargs or {})).eval()


def smallest_input(name: str, sizes: Sequence[int] = SIZES) -> tuple[int, dict]:
    """The smallest side in ``sizes`` that runs ``name`` (batch 1, eval), and the extra timm
    arguments it needs (``img_size`` for models built for one input size)."""
    fixed = bool(_timm().models.get_pretrained_cfg(name).fixed_input_size)
    for size in sizes:
        for kwargs in ({"img_size": size},) if fixed else ({},):
            try:
                model = build(name, kwargs)
                with torch.no_grad():
                    model(torch.randn(1, 3, size, size))
                return size, kwargs
            except Exception:
                continue
    raise RuntimeError(f"{name}: runs at none of the sizes {tuple(sizes)}")


def runs_at(name: str, sizes: Sequence[int]) -> tuple[int, dict] | None:
    """:func:`smallest_input` among ``sizes`` only; None if none runs."""
    try:
        return smallest_input(name, sizes)
    except RuntimeError:
        return None


def make_list(progress=print) -> list[dict]:
    """One entry per family plus ``VARIANTS``, with the input each runs at (see the module doc)."""
    entries = []
    for family, names in families().items():
        counts = {}
        for n in names:
            try:
                counts[n] = param_count(n)
            except Exception as err:  # a model timm cannot build is no candidate
                progress(f"  {n}: not built ({type(err).__name__}: {err})")
        if not counts:
            continue
        ranked = sorted(counts, key=lambda n: (counts[n], n))
        best, why = ranked[0], "smallest of its family"
        for n in ranked:
            if runs_at(n, [s for s in SIZES if s <= SMALL_INPUT]):
                if n != best:
                    why = f"smallest of its family that runs at {SMALL_INPUT}x{SMALL_INPUT} ({best} needs more)"
                best = n
                break
        entries.append({"family": family, "model": best, "params": counts[best], "why": why})
        progress(f"{family}: {best} ({counts[best] / 1e6:.2f}M of {len(names)} models)")
    for name, why in VARIANTS.items():
        entries.append({"family": module_of(name), "model": name, "params": param_count(name), "why": why})
    for e in entries:
        e["input_size"], e["kwargs"] = smallest_input(e["model"])
        if e["model"] in TEST_KWARGS:
            e["test_kwargs"] = TEST_KWARGS[e["model"]]
        progress(f"  {e['model']}: input {e['input_size']}{' ' + str(e['kwargs']) if e['kwargs'] else ''}")
    return entries


def write_list(path: Path = LIST_PATH, progress=print) -> list[dict]:
    entries = make_list(progress)
    payload = {
        "timm": _timm().__version__,
        "rule": "one smallest model (parameters; the smallest that runs at 64x64 where that one needs more) per "
        "timm model module, transformer modules and test_* models left out; plus named variants "
        "(experiments/bench/timm_families.py)",
        "models": entries,
    }
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return entries


def read_list(path: Path = LIST_PATH) -> list[dict]:
    return json.loads(path.read_text())["models"]


# ---- the probe -----------------------------------------------------------------------------
_MODULE_IN = re.compile(r"module '([^']*)'|ignore=\[([^\]]*)\]")


def probe(entry: dict, ratio: float = 0.3, dtype: torch.dtype = torch.float32, approximate: Sequence[str] = ()) -> dict:
    """Prune one listed model; ``status`` is ok, refused or broken."""
    t0 = time.perf_counter()
    model = build(entry["model"], entry.get("kwargs")).to(dtype)
    x = torch.randn(1, 3, entry["input_size"], entry["input_size"], dtype=dtype)
    before = sum(p.numel() for p in model.parameters())
    built = time.perf_counter()
    row = {"model": entry["model"], "family": entry["family"], "input": entry["input_size"]}
    try:
        groups = pruning.dependency_groups(model, x, approximate=approximate)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            record = pruning.prune_filters(model, x, ratio, approximate=approximate)
        with torch.no_grad():
            model(x)
        after = sum(p.numel() for p in model.parameters())
        cut = {e.name for e in record.entries}
        inexact = [g for g in groups if not g.exact and any(m.name in cut for m in g.members)]
        row.update(status="ok", removed=1 - after / before, exact=not inexact, detail=f"{len(record)} cuts")
        if record.approximation_error is not None:
            row["approximation_error"] = record.approximation_error
        if not len(record):
            row.update(status="refused", detail="nothing prunable")
    except pruning.ChannelMappingError as err:
        row.update(status="refused", detail=str(err))
    except Exception as err:
        row.update(status="broken", detail=f"{type(err).__name__}: {err}")
    row.update(build_s=built - t0, prune_s=time.perf_counter() - built)
    return row


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help=f"regenerate {LIST_PATH.name} from timm.list_models()")
    parser.add_argument("--models", default="", help="comma-separated model names (default: the whole list)")
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--approximate", default="", help="comma-separated approximate cuts to allow (eca)")
    parser.add_argument("--json", default="", help="also write the rows to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.write:
        entries = write_list()
        print(f"wrote {len(entries)} models to {LIST_PATH}")
        return 0
    entries = read_list()
    if args.models:
        wanted = args.models.split(",")
        known = {e["model"]: e for e in entries}
        entries = [known.get(n) or {"model": n, "family": module_of(n), "input_size": 64} for n in wanted]
    rows = []
    for entry in entries:
        row = probe(entry, args.ratio, approximate=[a for a in args.approximate.split(",") if a])
        rows.append(row)
        removed = (
            f"{row['removed']:.0%} params removed{'' if row['exact'] else ', inexact'}" if "removed" in row else ""
        )
        if "approximation_error" in row:
            removed += f", approximation error {row['approximation_error']:.3g}"
        print(
            f"{row['status']:8s} {row['model']:28s} {row['family']:20s} {row['build_s']:5.1f}s {row['prune_s']:5.1f}s "
            f"{removed} {'' if row['status'] == 'ok' else row['detail'][:300]}",
            flush=True,
        )
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "refused", "broken")}
    print(f"{len(rows)} models: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0 if counts["broken"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
