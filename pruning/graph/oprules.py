"""How functional ops map channel labels (see :mod:`pruning.graph.trace`).

A rule gets the op, its arguments and output, and the labels of its tensor inputs;
it sets the labels of the outputs and reports unions (channels that must go
together) and frozen channels. Shape ops run on the label tensors themselves, so
views, flattening, permutes, concatenation, chunking, indexing, padding and channel
shuffles map exactly; where a fixed size in the op would break after cutting (a
slice with constant bounds, ``split`` with fixed sizes, a reduction over channels)
the channels involved are frozen instead.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from pruning.graph.handlers import ChannelwiseHandler, get_handler

_ARITH = {"add", "sub", "mul", "div", "truediv", "floordiv", "mod", "pow", "and", "or", "xor", "matmul"}


_NAMES: dict[Any, str] = {}


def op_name(func: Any) -> str:
    """A short, normalised name: ``Tensor.__iadd__`` -> ``add``, ``relu_`` -> ``relu``."""
    try:
        return _NAMES[func]
    except (KeyError, TypeError):
        pass
    name = _op_name(func)
    try:
        _NAMES[func] = name
    except TypeError:
        pass
    return name


def _op_name(func: Any) -> str:
    n = getattr(func, "__name__", None) or str(func)
    if n == "__get__":
        n = getattr(getattr(func, "__self__", None), "__name__", n)
    if n.startswith("__") and n.endswith("__"):
        n = n[2:-2]
        if n[:1] in ("r", "i") and n[1:] in _ARITH:
            n = n[1:]
    return n.rstrip("_") or n


def qualname(func: Any) -> str:
    mod = getattr(func, "__module__", None)
    return f"{mod}.{op_name(func)}" if mod else f"Tensor.{op_name(func)}"


def compress(lab: Tensor) -> Tensor:
    """Shrink every dim along which the ids do not vary to size 1."""
    for d in range(lab.dim()):
        if lab.shape[d] > 1:
            first = lab.narrow(d, 0, 1)
            if bool((lab == first).all()):
                lab = first
    return lab


def _varying(lab: Tensor) -> list[int]:
    return [d for d in range(lab.dim()) if lab.shape[d] > 1]


def _full(tr, t: Tensor) -> Tensor:
    lab = tr.label(t)
    if lab is None:
        return torch.full(t.shape, -1, dtype=torch.long)
    return lab.expand(t.shape).contiguous()


def _align(lab: Tensor, nd: int) -> Tensor:
    return lab.reshape((1,) * (nd - lab.dim()) + tuple(lab.shape)) if lab.dim() < nd else lab


def tensors_in(obj: Any) -> list[Tensor]:
    """The tensors in (nested lists/tuples/dicts of) ``obj``, in order."""
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        out = []
        for o in obj:
            if isinstance(o, Tensor):
                out.append(o)
            elif isinstance(o, (tuple, list, dict)):
                out += tensors_in(o)
        return out
    if isinstance(obj, dict):
        return tensors_in(list(obj.values()))
    return []


_outs = tensors_in


def _set_all(tr, out: Any, lab: Tensor | None, compressed: bool = False) -> None:
    for o in _outs(out):
        tr.set_label(o, lab if lab is not None and lab.dim() == o.dim() else None, compressed)


def _arg(args: tuple, kwargs: dict, pos: int, key: str, default: Any = None) -> Any:
    if key in kwargs:
        return kwargs[key]
    return args[pos] if len(args) > pos else default


# ---- rules --------------------------------------------------------------------------
def elementwise(tr, func, name, args, kwargs, ins, labs, out) -> None:
    """Broadcasting ops: positions that meet are the same channel."""
    outs = _outs(out)
    nd = outs[0].dim()
    result = None
    merged = False
    for lab in labs:
        if lab is None or lab.dim() > nd:
            continue
        lab = _align(lab, nd)
        if result is None:
            result = lab
            continue
        a, b = torch.broadcast_tensors(result, lab)
        tr.union(a, b, f"op {name!r}")
        result = compress(torch.maximum(a, b))
        merged = True
    if result is None:
        _set_all(tr, out, None)
        return
    for t, lab in zip(ins, labs):
        if lab is not None or t.dim() > nd:
            continue
        shape = (1,) * (nd - t.dim()) + tuple(t.shape)
        dims = [d for d in range(nd) if shape[d] > 1 and result.shape[d] > 1]
        if not dims:
            continue
        owner = tr.params.get(id(t))
        if owner is not None and len(dims) == 1 and len(_varying(result)) == 1:
            d = dims[0]
            mname, pname, module = owner
            tr.member(mname, "param", d - (nd - t.dim()), "scale", result.reshape(-1), module, param=pname, axis=d)
        else:
            tr.freeze(result, f"a fixed-size tensor meets the channels in op {name!r} ({tr.where()})")
    _set_all(tr, out, result, compressed=not merged)


def first_only(tr, func, name, args, kwargs, ins, labs, out) -> None:
    """Ops whose output follows their first tensor (``type_as``, ``zeros_like``...)."""
    lab = tr.label(args[0]) if args and isinstance(args[0], Tensor) else None
    _set_all(tr, out, lab)


def untracked(tr, func, name, args, kwargs, ins, labs, out) -> None:
    """Factories (``new_zeros``...): their outputs have fixed sizes and no channels."""
    _set_all(tr, out, None)


def spatial(tr, func, name, args, kwargs, ins, labs, out) -> None:
    """Pooling and resizing: channels must sit in dims 0-1 only."""
    lab = labs[0]
    if lab is not None and any(d >= 2 for d in _varying(lab)):
        raise tr.error(f"op {name!r} in {tr.where()} pools over dims that carry channels")
    _set_all(tr, out, lab)


def reduction(tr, func, name, args, kwargs, ins, labs, out) -> None:
    """Reductions: over spatial dims they keep channels; over channels they freeze them."""
    if len(ins) > 1 and len(args) > 1 and isinstance(args[1], Tensor):
        return elementwise(tr, func, name, args, kwargs, ins, labs, out)
    x, lab = args[0], labs[0]
    if lab is None:
        return _set_all(tr, out, None)
    dim = _arg(args, kwargs, 2 if name == "norm" else 1, "dim")
    nd = x.dim()
    dims = list(range(nd)) if dim is None else [dim] if isinstance(dim, int) else list(dim)
    dims = sorted({d % nd for d in dims})
    if any(lab.shape[d] > 1 for d in dims):
        tr.freeze(lab, f"op {name!r} reduces over channels ({tr.where()})")
        return _set_all(tr, out, None)
    first = _outs(out)[0]
    if first.dim() != nd:
        keep = [lab.shape[d] for d in range(nd) if d not in dims]
        lab = lab.reshape(keep)
    _set_all(tr, out, lab)


def channel_mixing(tr, func, name, args, kwargs, ins, labs, out) -> None:
    """Ops along one dim (softmax, cumsum, normalize): exact only off the channel dim."""
    lab = labs[0]
    if lab is not None:
        default = 1 if name in ("normalize", "local_response_norm", "glu") else None
        pos = 2 if name == "normalize" else 1
        dim = _arg(args, kwargs, pos, "dim", default)
        if name == "glu":
            raise tr.error(f"op 'glu' in {tr.where()} halves the channels; it cannot be cut")
        if dim is None or lab.shape[dim % lab.dim()] > 1:
            tr.freeze(lab, f"op {name!r} mixes channels ({tr.where()})")
    _set_all(tr, out, lab)


def layer_norm(tr, func, name, args, kwargs, ins, labs, out) -> None:
    """``F.layer_norm``: linked to the LayerNorm module that calls it (inexact)."""
    x, lab = args[0], labs[0]
    shape = _arg(args, kwargs, 1, "normalized_shape")
    nd = x.dim()
    if lab is not None and any(d >= nd - len(shape) for d in _varying(lab)):
        mname, module = tr.stack[-1] if tr.stack else ("", None)
        handler = get_handler(module) if module is not None else None
        if len(shape) == 1 and len(_varying(lab)) == 1 and isinstance(handler, ChannelwiseHandler):
            tr.member(mname, "module", 0, "norm", lab.reshape(-1), module, handler, axis=nd - 1)
        elif _arg(args, kwargs, 2, "weight") is not None and not tr.in_ignored():
            owner = tr.params.get(id(_arg(args, kwargs, 2, "weight")), ("?", "", module))
            raise tr.error(
                f"module {owner[0]!r} ({type(owner[2]).__name__}) is not supported: it layer-normalises over "
                f"channels and no pruning handler is registered for it. Register one with "
                f"pruning.register_handler(...) or pass ignore=[{owner[0]!r}]"
            )
        else:
            tr.freeze(lab, f"layer_norm over channels outside a LayerNorm module ({tr.where()})")
    _set_all(tr, out, lab)


def _split_unions(tr, name: str, lab_in: Tensor, new: Tensor) -> int | None:
    """A view that factorises a channel dim (e.g. ``(C,) -> (g, C/g)``): keep the outer
    factors' sizes fixed by cutting the same inner offset in every outer slice. Returns the
    dim of the inner factor (None: no split)."""
    new = compress(new)
    vin, vout = _varying(compress(lab_in)), _varying(new)
    if len(vout) > len(vin):
        grid = new.reshape([new.shape[d] for d in vout])
        rows = grid.reshape(-1, grid.shape[-1])
        tr.union(rows[:1].expand(rows.shape[0] - 1, -1), rows[1:], f"op {name!r} splits channels into groups")
        return vout[-1]
    return None


def _requested(name: str, args: tuple, kwargs: dict, nd: int) -> list[int] | None:
    """The sizes a ``view``/``reshape``/``unflatten`` asked for, one per output dim (-1 kept)."""
    if name in ("view", "reshape"):
        shape = kwargs.get("shape", kwargs.get("size", args[1:]))
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = shape[0]
        return [int(v) for v in shape] if len(shape) == nd else None
    if name == "unflatten":
        dim, sizes = _arg(args, kwargs, 1, "dim"), list(_arg(args, kwargs, 2, "sizes"))
        dim %= nd - len(sizes) + 1
        return [0] * dim + [int(v) for v in sizes] + [0] * (nd - dim - len(sizes))
    return None


def _fixed_size(tr, name: str, args: tuple, kwargs: dict, new: Tensor, dims: list[int]) -> bool:
    """Does the view size one of ``dims`` (channel factors it splits off or merges) by a number
    the calling module holds (``self.head_dim``, ``self.dh``)? Then a cut would not fit it;
    ``-1`` (or any other number) is taken to follow the channels."""
    requested = _requested(name, args, kwargs, new.dim())
    if requested is None or not tr.stack:
        return False
    numbers = {v for v in vars(tr.stack[-1][1]).values() if type(v) is int and v > 1}
    return any(requested[d] != -1 and new.shape[d] in numbers for d in dims)


def _empty(tr, name: str, x: Tensor, lab: Tensor, out: Any) -> bool:
    """An op that returned an empty tensor (no detection, an empty pyramid level): there
    are no labels to run the op on, so the output keeps ``x``'s channels where they stay
    in place, and they are frozen otherwise. False if the output is not empty."""
    outs = _outs(out)
    if not outs or outs[0].numel():
        return False
    o = outs[0]
    if o.dim() == x.dim() and all(o.shape[d] == x.shape[d] for d in _varying(lab)):
        _set_all(tr, out, lab, compressed=True)
    else:
        tr.freeze(lab, f"op {name!r} leaves no element of the channels ({tr.where()})")
        _set_all(tr, out, None)
    return True


def reshape(tr, func, name, args, kwargs, ins, labs, out) -> None:
    """Views, permutes, flatten and friends: run the op on the labels. A view that splits
    channels into groups of a size the module holds as a number (heads of ``self.head_dim``
    channels) freezes them: cutting would not fit that fixed size."""
    x, lab = args[0], labs[0] if ins and ins[0] is args[0] else None
    if lab is None:
        return _set_all(tr, out, None)
    if _empty(tr, name, x, lab, out):
        return
    new = func(_full(tr, x), *args[1:], **kwargs)
    if name in ("view", "reshape", "unflatten", "view_as", "reshape_as"):
        inner = _split_unions(tr, name, lab, new)
        vin, vout = _varying(compress(lab)), _varying(compress(new))
        dims = [inner] if inner is not None else vout if len(vout) < len(vin) else []
        if dims and _fixed_size(tr, name, args, kwargs, new, dims):
            tr.freeze(lab, f"op {name!r} groups channels by a fixed size ({tr.where()})")
    for o, n in zip(_outs(out), _outs(new)):
        tr.set_label(o, n)


def chunk(tr, func, name, args, kwargs, ins, labs, out) -> None:
    """chunk/split/unbind: equal chunks cut the same offsets; fixed sizes freeze."""
    x, lab = args[0], labs[0]
    if lab is None:
        return _set_all(tr, out, None)
    parts = _outs(func(_full(tr, x), *args[1:], **kwargs))
    dim = _arg(args, kwargs, 2 if name in ("chunk", "split", "tensor_split") else 1, "dim", 0) % x.dim()
    if lab.shape[dim] > 1:
        equal = all(p.shape == parts[0].shape for p in parts)
        sized_by_count = name == "chunk" or (
            name == "tensor_split" and isinstance(_arg(args, kwargs, 1, "sections"), int)
        )
        if equal and sized_by_count and len(parts) > 1:
            for p in parts[1:]:
                tr.union(parts[0], p, f"op {name!r} splits channels into equal chunks")
        else:
            tr.freeze(lab, f"op {name!r} splits channels at fixed sizes ({tr.where()})")
    for o, n in zip(_outs(out), parts):
        tr.set_label(o, n)


def positional(tr, func, name, args, kwargs, ins, labs, out) -> None:
    """Indexing, narrow, roll, select: channels stay only if the op keeps all of them in order."""
    x, lab = args[0], labs[0] if ins and ins[0] is args[0] else None
    if lab is None:
        return _set_all(tr, out, None)
    if _empty(tr, name, x, lab, out):
        return
    for d in _varying(lab):
        shape = [1] * x.dim()
        shape[d] = x.shape[d]
        probe = torch.arange(x.shape[d]).view(shape).expand(x.shape)
        res = _outs(func(probe, *args[1:], **kwargs))[0]
        res = compress(res)
        if _varying(res) and (len(_varying(res)) != 1 or not torch.equal(res.reshape(-1), torch.arange(x.shape[d]))):
            tr.freeze(lab, f"op {name!r} picks channels at fixed positions ({tr.where()})")
            break
        if not _varying(res) and x.shape[d] > 1:
            tr.freeze(lab, f"op {name!r} picks channels at fixed positions ({tr.where()})")
            break
    new = func(_full(tr, x), *args[1:], **kwargs)
    for o, n in zip(_outs(out), _outs(new)):
        tr.set_label(o, n)


_TO_NUMBERS = {"nonzero", "argwhere", "where", "nms", "unique", "unique_consecutive", "bincount", "histc"}


def indices(tr, func, name, args, kwargs, ins, labs, out) -> None:
    """Ops that return positions or counts (``nonzero``, ``where(cond)``, ``nms``, ``unique``,
    ``topk``/``sort`` indices): a position along a channel dim is a channel number (a class
    or anchor id in a detector's post-processing), so the channels there are frozen; the
    results carry no channels (``topk``/``sort`` values keep theirs, in their new order)."""
    if name == "where" and len(args) + len(kwargs) > 1:
        return elementwise(tr, func, name, args, kwargs, ins, labs, out)
    if name in _TO_NUMBERS:
        for lab in labs:
            tr.freeze(lab, f"op {name!r} turns channel positions or values into numbers ({tr.where()})")
        return _set_all(tr, out, None)
    x, lab = args[0], labs[0] if ins and ins[0] is args[0] else None
    if lab is None:
        return _set_all(tr, out, None)
    dim = _arg(args, kwargs, 2 if name in ("topk", "kthvalue") else 1, "dim", -1)
    dim = (0 if name == "msort" else dim) % max(x.dim(), 1)
    if lab.shape[dim] > 1:
        tr.freeze(lab, f"op {name!r} picks channels by value ({tr.where()})")
    outs = _outs(out)
    if name == "argsort":
        return _set_all(tr, out, None)
    values = outs[0]
    if lab.shape[dim] == 1:  # sorted along a dim without channels: they stay where they are
        new = lab if values.dim() == x.dim() else lab.squeeze(dim)
    elif len(outs) > 1 and values.dim() == x.dim():
        new = _full(tr, x).gather(dim, outs[1])
    else:
        new = None
    tr.set_label(values, new)
    for o in outs[1:]:
        tr.set_label(o, None)


def setitem(tr, func, name, args, kwargs, ins, labs, out) -> None:
    """``x[index] = v``: a write along dims without channels (rows of a buffer filled per
    pyramid level) gives ``x`` the channels of ``v``, united with those already there; any
    other write (at fixed channel positions, or one that drops dims) freezes both."""
    x, index, v = args[0], args[1], args[2]
    lx = tr.label(x)
    lv = tr.label(v) if isinstance(v, Tensor) else None
    part = x[index]
    merged = lx
    if lv is not None:
        lv = _align(lv, part.dim())
        picked = [d for d in range(x.dim()) if part.dim() != x.dim() or part.shape[d] != x.shape[d]]
        if part.dim() != x.dim() or lv.dim() != x.dim() or any(lv.shape[d] > 1 for d in picked):
            why = f"op {name!r} writes channels where they cannot be followed ({tr.where()})"
            tr.freeze(lv, why)
            tr.freeze(lx, why)
            return
        merged = lv
        if lx is not None:
            a, b = torch.broadcast_tensors(lx, lv)
            tr.union(a, b, f"op {name!r}")
            merged = compress(torch.maximum(a, b))
    if merged is None:
        return
    for d in _varying(merged) if part.numel() else ():  # the write must cover every channel position, in order
        shape = [1] * x.dim()
        shape[d] = x.shape[d]
        res = compress(torch.arange(x.shape[d]).view(shape).expand(x.shape)[index])
        if _varying(res) != [d] or not torch.equal(res.reshape(-1), torch.arange(x.shape[d])):
            tr.freeze(merged, f"op {name!r} writes channels at fixed positions ({tr.where()})")
            break
    tr.set_label(x, merged)


def roi_pool(tr, func, name, args, kwargs, ins, labs, out) -> None:
    """``roi_align``/``roi_pool``: one output per box, channels kept; the boxes' coordinates
    are values (their channels are frozen)."""
    lab = labs[0] if ins and ins[0] is args[0] else None
    for other in labs[1:]:
        tr.freeze(other, f"op {name!r} reads box coordinates ({tr.where()})")
    if lab is not None and any(d != 1 for d in _varying(lab)):
        raise tr.error(f"op {name!r} in {tr.where()} pools over dims that carry channels")
    _set_all(tr, out, lab)


def pad(tr, func, name, args, kwargs, ins, labs, out) -> None:
    """``F.pad``: padded channel positions belong to no channel (-1)."""
    lab = labs[0]
    if lab is None:
        return _set_all(tr, out, None)
    pads = list(_arg(args, kwargs, 1, "pad"))
    mode = _arg(args, kwargs, 2, "mode", "constant")
    nd, new = lab.dim(), []
    for i in range(len(pads) // 2):
        d = nd - 1 - i
        lo, hi = pads[2 * i], pads[2 * i + 1]
        if lab.shape[d] == 1:
            new += [0, 0]
            continue
        new += [lo, hi]
        if lo < 0 or hi < 0 or mode != "constant":
            tr.freeze(lab, f"op 'pad' ({mode}, {pads}) on channels ({tr.where()})")
    _set_all(tr, out, F.pad(lab, new, value=-1))


def cat(tr, func, name, args, kwargs, ins, labs, out) -> None:
    """Concatenation: along channels the ids are concatenated (offsets); along
    other dims the inputs share channels."""
    tensors = list(_arg(args, kwargs, 0, "tensors"))
    nd = tensors[0].dim() + (name == "stack")  # stack may insert the new dim after the last one
    dim = _arg(args, kwargs, 1, "dim", 0) % nd
    tlabs = [tr.label(t) for t in tensors]
    known = [lab for lab in tlabs if lab is not None]
    if name == "stack" or all(lab.shape[dim] == 1 for lab in known):
        merged = None
        for lab in known:
            if merged is None:
                merged = lab
                continue
            a, b = torch.broadcast_tensors(merged, lab)
            tr.union(a, b, f"op {name!r} along a non-channel dim")
            merged = compress(torch.maximum(a, b))
        for t, lab in zip(tensors, tlabs):
            if lab is None and any(t.shape[d] > 1 and merged.shape[d] > 1 for d in range(t.dim()) if d != dim):
                tr.freeze(merged, f"op {name!r} joins channels with an untracked tensor ({tr.where()})")
        if name == "stack":
            merged = merged.unsqueeze(dim)
        return _set_all(tr, out, merged)
    other = [max(lab.shape[d] for lab in known) if d != dim else 0 for d in range(tensors[0].dim())]
    parts = []
    for t, lab in zip(tensors, tlabs):
        shape = list(other)
        shape[dim] = t.shape[dim]
        parts.append(torch.full(shape, -1, dtype=torch.long) if lab is None else lab.expand(shape))
    _set_all(tr, out, torch.cat(parts, dim))


def shuffle(tr, func, name, args, kwargs, ins, labs, out) -> None:
    """``channel_shuffle(x, g)``: keep ``g`` groups by cutting the same offset in each."""
    x, lab = args[0], labs[0]
    if lab is None:
        return _set_all(tr, out, None)
    g = int(_arg(args, kwargs, 1, "groups"))
    ids = tr.vector(lab, 1, x.shape[1], f"op {name!r} in {tr.where()}")
    grid = ids.view(g, -1)
    tr.union(grid[:1].expand(g - 1, -1), grid[1:], f"op {name!r} keeps {g} groups")
    _set_all(tr, out, grid.t().reshape([1, -1] + [1] * (x.dim() - 2)), compressed=True)


def pixel_shuffle(tr, func, name, args, kwargs, ins, labs, out) -> None:
    """``pixel_shuffle``: each block of r*r channels becomes one channel (cut as a whole);
    ``pixel_unshuffle``: each channel becomes r*r channels (all the same channel)."""
    x, lab = args[0], labs[0]
    if lab is None:
        return _set_all(tr, out, None)
    r = int(_arg(args, kwargs, 1, "upscale_factor" if name == "pixel_shuffle" else "downscale_factor"))
    ids = tr.vector(lab, x.dim() - 3, x.shape[-3], f"op {name!r} in {tr.where()}")
    if name == "pixel_shuffle":
        blocks = ids.view(-1, r * r)
        tr.union(blocks[:, :1].expand(-1, r * r - 1), blocks[:, 1:], f"op {name!r} merges {r * r} channels")
        ids = blocks[:, 0]
    else:
        ids = ids.repeat_interleave(r * r)
    shape = [1] * out.dim()
    shape[-3] = ids.numel()
    _set_all(tr, out, ids.view(shape), compressed=True)


def _lab(tr, t: Tensor) -> Tensor:
    """``t``'s compressed label with ``t.dim()`` dims; all ``-1`` (one position) if untracked."""
    lab = tr.label(t)
    return torch.full((1,) * t.dim(), -1, dtype=torch.long) if lab is None else _align(lab, t.dim())


def contract(tr, name: str, a_shape: tuple, A: Tensor, b_shape: tuple, B: Tensor) -> Tensor:
    """The label of ``a @ b`` (``a: [..., n, k]``, ``b: [..., k, m]``, ``A``/``B`` their labels).

    Channels along ``k`` are summed over: frozen. An output position belongs to the channel
    of its row of ``a`` (if ``a``'s rows carry channels) or else of its column of ``b``: a
    channel-preserving map (an attention map applied to values, a global-context pooling)
    keeps the channels of the side that carries them, and the other side, mixed into every
    output, is frozen. Where neither side carries channels of its own, the sides meet
    position by position along the batch dims, as in an elementwise op. Batch slices of the
    kept side stay non-empty (one channel each frozen) where the other side has them too.
    """
    where = tr.where()
    if A.shape[-1] > 1:
        tr.freeze(A, f"op {name!r} sums over channels ({where})")
    if B.shape[-2] > 1:
        tr.freeze(B, f"op {name!r} sums over channels ({where})")
    a, b = A[..., :, :1], B[..., :1, :]
    nd = max(a.dim(), b.dim())
    a, b = _align(a, nd), _align(b, nd)
    real_a = (1,) * (nd - len(a_shape)) + tuple(a_shape[:-2])
    real_b = (1,) * (nd - len(b_shape)) + tuple(b_shape[:-2])
    if a.shape[-2] == 1 and b.shape[-1] == 1:
        x, y = torch.broadcast_tensors(a, b)
        both = (x >= 0) & (y >= 0)
        if bool(both.any()):
            tr.union(x[both], y[both], f"op {name!r}")
        out = compress(torch.where(x >= 0, x, y))
        for lab, real_other in ((a, real_b), (b, real_a)):
            if bool((lab < 0).all()) and any(real_other[d] > 1 and out.shape[d] > 1 for d in range(nd - 2)):
                tr.freeze(out, f"a fixed-size tensor meets the channels in op {name!r} ({where})")
        return out
    sides = [(a, b, real_b), (b, a, real_a)] if a.shape[-2] > 1 else [(b, a, real_a), (a, b, real_b)]
    if _frozen(tr, sides[0][0]) and not _frozen(tr, sides[1][0]):
        sides.reverse()  # keep the channels that can still be cut
    elif a.shape[-2] > 1 and b.shape[-1] > 1 and not _frozen(tr, b):
        # channels x channels (cross-covariance attention, a Gram matrix): which side's channels
        # the code keeps downstream is not known here, so neither is cut
        tr.freeze(a, f"op {name!r} maps channels onto channels ({where})")
    out, other, real_other = sides[0]
    tr.freeze(other, f"op {name!r} mixes one operand into every channel of the other ({where})")
    if any(out.shape[d] > 1 and real_other[d] > 1 for d in range(nd - 2)):
        tr.freeze(out[..., :1, :1], f"op {name!r} pairs the operands' batch slices ({where})")
    if _frozen(tr, out):
        return torch.full((1,) * nd, -1, dtype=torch.long)  # nothing to cut: a fixed tensor from here on
    return out


def _frozen(tr, lab: Tensor) -> bool:
    """Are all of ``lab``'s channels frozen already (directly, not through unions)? True if it has none."""
    ids = lab[lab >= 0].unique()
    if not ids.numel():
        return True
    frozen = tr.result.frozen
    if not frozen:
        return False
    return bool(torch.isin(ids, torch.cat([f for f, _ in frozen])).all())


def _check_params(tr, name: str, tensors: list) -> None:
    """A parameter of a handled layer may be cut with that layer: it cannot serve as a fixed operand."""
    for t in tensors:
        owner = tr.params.get(id(t)) if isinstance(t, torch.nn.Parameter) else None
        if owner is not None and get_handler(owner[2]) is not None:
            mname, pname, module = owner
            raise tr.error(
                f"parameter {pname!r} of {type(module).__name__} {mname!r} is used outside that module, by op "
                f"{name!r} in {tr.where()}; the engine cannot follow it there"
            )


def matmul(tr, func, name, args, kwargs, ins, labs, out) -> None:
    """``matmul``/``mm``/``bmm`` (see :func:`contract`); 1-D operands as in ``torch.matmul``."""
    a, b = args[0], args[1]
    if getattr(func, "__name__", "") == "__rmatmul__":
        a, b = b, a
    _check_params(tr, name, [a, b])
    A, B = _lab(tr, a), _lab(tr, b)
    a_shape, b_shape = tuple(a.shape), tuple(b.shape)
    if a.dim() == 1:
        A, a_shape = A.unsqueeze(0), (1, *a_shape)
    if b.dim() == 1:
        B, b_shape = B.unsqueeze(-1), (*b_shape, 1)
    lab = contract(tr, name, a_shape, A, b_shape, B)
    if a.dim() == 1:
        lab = lab.squeeze(-2)
    if b.dim() == 1:
        lab = lab.squeeze(-1)
    _set_all(tr, out, lab)


def attention(tr, func, name, args, kwargs, ins, labs, out) -> None:
    """``scaled_dot_product_attention``: ``softmax(q @ k^T) @ v`` (see :func:`contract`); the
    channels of ``q`` and ``k`` are summed over (frozen), those of ``v`` pass through."""
    q, k, v = (_arg(args, kwargs, i, key) for i, key in enumerate(("query", "key", "value")))
    Q, K, V = _lab(tr, q), _lab(tr, k), _lab(tr, v)
    mask = _arg(args, kwargs, 3, "attn_mask")
    if isinstance(mask, Tensor) and tr.label(mask) is not None:
        tr.freeze(tr.label(mask), f"an attention mask carries channels ({tr.where()})")
    if _arg(args, kwargs, 7, "enable_gqa", False):
        for lab in (Q, K, V):
            tr.freeze(lab, f"op {name!r} with grouped query heads ({tr.where()})")
        return _set_all(tr, out, None)
    kt_shape = (*k.shape[:-2], k.shape[-1], k.shape[-2])
    scores = contract(tr, name, tuple(q.shape), Q, kt_shape, K.transpose(-2, -1))
    if scores.shape[-1] > 1:
        tr.freeze(scores, f"op {name!r} takes a softmax over channels ({tr.where()})")
    s_shape = (*torch.broadcast_shapes(q.shape[:-2], k.shape[:-2]), q.shape[-2], k.shape[-2])
    _set_all(tr, out, contract(tr, name, s_shape, scores, tuple(v.shape), V))


def functional_conv(tr, func, name, args, kwargs, ins, labs, out) -> None:
    """``F.conv1d/2d/3d`` with a fixed weight (a buffer or a computed tensor, e.g. a blur
    filter): depthwise, it maps channel ``i`` to outputs ``i*m .. i*m+m-1`` and a per-channel
    weight buffer is cut with them (through the module's handler if it has one); any other
    fixed weight sums over its input channels (frozen) into outputs of fixed count."""
    x, w = args[0], _arg(args, kwargs, 1, "weight")
    _check_params(tr, name, [w])
    lab = tr.label(x)
    if lab is None:
        return _set_all(tr, out, None)
    if tr.label(w) is not None:
        raise tr.error(f"op {name!r} in {tr.where()} computes its weight from the channels")
    n = w.dim() - 2
    axis = x.dim() - n - 1
    cin, groups = x.shape[axis], int(_arg(args, kwargs, 6, "groups", 1))
    try:
        ids = tr.vector(lab, axis, cin, f"op {name!r} in {tr.where()}")
    except Exception as err:
        raise tr.error(str(err)) from None
    if groups != cin or cin == 1:
        tr.freeze(ids, f"op {name!r} with a fixed weight sums over channels ({tr.where()})")
        return _set_all(tr, out, None)
    out_ids = ids.repeat_interleave(w.shape[0] // cin)
    owner = tr.params.get(id(w))
    if owner is not None:
        mname, pname, module = owner
        handler = get_handler(module)
        if isinstance(handler, ChannelwiseHandler):
            tr.member(mname, "module", 0, "norm", out_ids, module, handler, axis=axis)
        else:
            tr.member(mname, "param", 0, "scale", out_ids, module, param=pname, axis=axis)
    shape = [1] * out.dim()
    shape[axis] = out_ids.numel()
    _set_all(tr, out, out_ids.view(shape), compressed=bool((out_ids >= 0).any()))


def unfold(tr, func, name, args, kwargs, ins, labs, out) -> Any:
    """``Tensor.unfold`` (sliding windows over a dim): exact off the channel dims; windows
    over channels freeze them. ``F.unfold`` (im2col) is not mapped."""
    if func is not Tensor.unfold:
        return NotImplemented
    lab = labs[0]
    if lab is not None and lab.shape[_arg(args, kwargs, 1, "dimension") % lab.dim()] > 1:
        tr.freeze(lab, f"op 'unfold' slides over channels ({tr.where()})")
    return reshape(tr, func, name, args, kwargs, ins, labs, out)


RULES: dict[str, Callable] = {}
PARAM_OK: set[str] = set()
# A parameter of a module without a handler is never cut: every op but these reads it as a fixed
# tensor (position bias tables, attention weights). A conv with its own weight is a layer that
# needs a handler.
NO_FIXED_PARAMS = {"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}


def register_op_rule(
    names: str | tuple[str, ...], rule: Callable, *, params_ok: bool = False, replace: bool = False
) -> None:
    """Register how an op (by normalised name, see :func:`op_name`) maps channels."""
    for n in (names,) if isinstance(names, str) else names:
        if n in RULES and not replace:
            raise ValueError(f"an op rule for {n!r} is already registered; pass replace=True to override it")
        RULES[n] = rule
        if params_ok:
            PARAM_OK.add(n)


_ELEMENTWISE = """add sub rsub mul div true_divide floor_divide truediv floordiv mod remainder fmod pow
maximum minimum fmax fmin masked_fill addcmul addcdiv lerp clamp clip clamp_min clamp_max
eq ne lt le gt ge and or xor logical_and logical_or logical_xor atan2 hypot copysign copy
relu relu6 hardtanh leaky_relu elu selu celu gelu silu mish sigmoid hardsigmoid hardswish tanh
softplus softsign tanhshrink logsigmoid hardshrink softshrink threshold rrelu exp expm1 log log1p
log2 log10 sqrt rsqrt square reciprocal abs neg negative sign sgn erf erfc sin cos tan floor ceil
round trunc frac nan_to_num dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout
contiguous clone detach float double half bfloat16 data logical_not bitwise_not isnan isfinite
bernoulli fill zero normal uniform exponential requires_grad""".split()
_FIRST_ONLY = "to type type_as cpu cuda zeros_like ones_like empty_like full_like rand_like randn_like".split()
_FACTORY = "new_zeros new_ones new_empty new_full new_tensor".split()
_SPATIAL = """max_pool1d max_pool2d max_pool3d max_pool1d_with_indices max_pool2d_with_indices
max_pool3d_with_indices avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d
adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d
adaptive_max_pool1d_with_indices adaptive_max_pool2d_with_indices adaptive_max_pool3d_with_indices
lp_pool1d lp_pool2d lp_pool3d fractional_max_pool2d interpolate upsample upsample_nearest
upsample_bilinear""".split()
_REDUCE = "mean sum amax amin max min std var norm logsumexp prod nansum nanmean median argmax argmin all any".split()
_MIXING = "softmax log_softmax softmin cumsum cumprod normalize local_response_norm glu".split()
_RESHAPE = """view reshape flatten unflatten permute transpose swapaxes swapdims movedim moveaxis t T mT
squeeze unsqueeze expand expand_as view_as reshape_as repeat tile flip fliplr flipud""".split()
_POSITIONAL = "getitem narrow select index_select roll take_along_dim gather".split()

register_op_rule(tuple(_ELEMENTWISE), elementwise, params_ok=True)
register_op_rule(tuple(_FIRST_ONLY), first_only, params_ok=True)
register_op_rule(tuple(_FACTORY), untracked, params_ok=True)
register_op_rule(tuple(_SPATIAL), spatial)
register_op_rule(tuple(_REDUCE), reduction)
register_op_rule(tuple(_MIXING), channel_mixing)
register_op_rule(tuple(_RESHAPE), reshape, params_ok=True)
register_op_rule(("chunk", "split", "tensor_split", "unbind"), chunk)
register_op_rule(tuple(_POSITIONAL), positional)
register_op_rule("pad", pad)
register_op_rule(tuple(sorted(_TO_NUMBERS - {"where"})) + ("topk", "sort", "argsort", "msort", "kthvalue"), indices)
register_op_rule("where", indices, params_ok=True)
register_op_rule("setitem", setitem, params_ok=True)
register_op_rule(("roi_align", "roi_pool"), roi_pool)
register_op_rule(("channel_shuffle", "native_channel_shuffle"), shuffle)
register_op_rule(("pixel_shuffle", "pixel_unshuffle"), pixel_shuffle)
register_op_rule(("cat", "concat", "concatenate", "stack"), cat)
register_op_rule("layer_norm", layer_norm, params_ok=True)
register_op_rule(("matmul", "mm", "bmm"), matmul, params_ok=True)
register_op_rule("scaled_dot_product_attention", attention)
register_op_rule(("conv1d", "conv2d", "conv3d"), functional_conv)
register_op_rule("unfold", unfold)
