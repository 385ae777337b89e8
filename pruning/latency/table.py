"""A latency lookup table: each layer timed alone at the shapes a channel assignment gives it.

Filter pruning changes a layer's shape through the channel groups it reads and writes, so
the latency of a pruned model is predicted as the sum of its layers' times at their cut
shapes (convs, linears, norms: every module a group cuts) plus the rest (activations,
pooling, adds, per-op overhead), a fixed part and a part proportional to the activation
volume, fitted so that measured latency ratios come out right (:meth:`LatencyTable.calibrate`). Layers are timed on demand and
remembered by their cut shape and input shape, so a search over assignments only times the
shapes it visits. A layer at its dense shape is timed alone (the fastest of a few samples);
at a cut shape, as a ratio to the dense layer timed in alternation with it, so that load on a
busy machine shifts both sides alike and entries timed at different moments stay comparable; :meth:`LatencyTable.build` times every group on its channel grid up front
(HALP and NetAdapt use such per-layer tables). Times are cached in a JSON file per device,
thread count, torch version and batch size.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pruning.checks import check_number
from pruning.graph.groups import ChannelGroup, build_graph
from pruning.latency.comparison import (
    LatencyComparison,
    batch_inputs,
    compare_latency,
    device_name,
    model_device,
    pinned_threads,
)
from pruning.latency.layers import (
    TimedLayer,
    atomic_write_json,
    channel_ranks,
    collect_layers,
    cut_layer,
    input_shape,
    record_shapes,
    time_module,
    time_ratio,
)
from pruning.structured.cut import group_name, prune_to

Progress = Callable[[int, int, str], None]
_PROCESS_TIMES: dict[str, dict[str, float]] = {}  # per device/threads/torch/batch digest: shape key -> ms


def grid_counts(n: int, frozen: int, grid: int, max_points: int = 16) -> list[int]:
    """The channel counts a search may give a group of ``n`` channels (``frozen`` never cut):
    multiples of ``grid`` in ``[max(1, frozen), n)`` and ``n`` itself, ascending. A wide group
    steps by a multiple of ``grid`` so that it has at most about ``max_points`` counts."""
    low = max(1, frozen)
    step = grid * max(1, math.ceil(n / (grid * max_points)))
    return sorted({k for k in range(step, n, step) if k >= low} | {n})


class LatencyTable:
    """Per-layer latencies of one model at one batch size, on the device its parameters are on.

    ``groups`` maps every prunable group's name to ``(channels, frozen)``; ``grid[g]`` lists
    the counts a search may give it. :meth:`predict` returns the model's latency in ms for a
    ``{group: channels}`` assignment (groups left out keep all channels).
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        batch_size: int = 1,
        grid: int = 8,
        cache_dir: str | os.PathLike | None = None,
        threads: int | None = None,
        repeats: int = 5,
        ignore: tuple[str, ...] | list[str] = (),
        criterion: Any = "l1",
        calibrate_s: float = 10.0,
        max_points: int = 16,
    ):
        check_number("grid", grid, 1, integer=True, suffix=" (a channel multiple, e.g. 8 or 16)")
        self.model, self.example_inputs, self.batch_size = model, example_inputs, batch_size
        self.threads, self.repeats = threads, max(1, repeats)
        self.device = model_device(model)
        self.inputs = batch_inputs(example_inputs, batch_size, self.device)
        graph = build_graph(model, example_inputs, tuple(ignore))
        self.channel_groups: dict[str, ChannelGroup] = {group_name(g): g for g in graph.groups if g.n_prunable > 0}
        self.groups = {n: (g.n_channels, g.n_channels - g.n_prunable) for n, g in self.channel_groups.items()}
        self.grid = {n: grid_counts(c, f, grid, max_points) for n, (c, f) in self.groups.items()}
        self.grid_step = grid
        self.criterion = criterion
        self._ranks = channel_ranks(model, self.channel_groups, criterion)
        self._kept_memo: dict[tuple[str, int], torch.Tensor] = {}
        self.layers = record_shapes(model, self.inputs, collect_layers(self.channel_groups))
        with pinned_threads(threads) as n_threads:
            self.n_threads = n_threads
        self.meta = {
            "device": device_name(self.device),
            "threads": self.n_threads,
            "torch": torch.__version__,
            "batch_size": batch_size,
            "dtype": str(next(iter(model.parameters()), torch.empty(0)).dtype),
        }
        digest = hashlib.sha1(json.dumps(self.meta, sort_keys=True).encode()).hexdigest()[:16]
        self.path = Path(cache_dir) / f"latency-{digest}.json" if cache_dir is not None else None
        self.times = _PROCESS_TIMES.setdefault(digest, {})  # shapes timed earlier in this process
        if self.path is not None and self.path.exists():
            self.times.update(json.loads(self.path.read_text(encoding="utf-8")).get("times", {}))
        self._memo: dict[tuple, float] = {}
        self.measured = 0  # layer shapes timed by this table (not read from the cache)
        self.build_seconds = 0.0
        self._dense_volume = self.volume({})
        self.calibration: list[LatencyComparison] = []
        self.rest_fixed = self.rest_per_volume = 0.0
        self.dense_ms = 0.0
        self.curve: list[tuple[float, float]] = [(1.0, 1.0)]  # base ratio -> measured ratio (calibrate)
        if calibrate_s > 0:
            self.calibrate(calibrate_s)
        else:  # layer times only (what a per-group choice such as round_to="auto" compares)
            self.dense_ms = self.layers_ms({})

    def _kept(self, group: str, count: int) -> torch.Tensor:
        """Bool per channel of ``group`` kept at ``count``: the frozen ones and the best prunable ones."""
        key = (group, int(count))
        kept = self._kept_memo.get(key)
        if kept is None:
            g = self.channel_groups[group]
            kept = g.frozen.clone()
            kept[self._ranks[group][: max(0, int(count) - int(g.frozen.sum()))]] = True
            self._kept_memo[key] = kept
        return kept

    def _counts(self, layer: TimedLayer, channels: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(int(channels.get(g, self.groups[g][0])) for g in layer.groups)

    # -- timing ---------------------------------------------------------------------------
    def layer_ms(self, layer: TimedLayer, channels: Mapping[str, int], measure: bool = True) -> float:
        """Milliseconds of one call of ``layer`` at the shape ``channels`` gives it (timed if new).

        measure=False never times: a shape not in the table is interpolated from the ones
        that are (:meth:`_interpolate`), the fallback for assignments off the grid."""
        counts = self._counts(layer, channels)
        memo = self._memo.get((layer.name, counts))
        if memo is not None:
            return memo
        if not measure:
            return self._interpolate(layer, counts)
        module = cut_layer(layer, dict(zip(layer.groups, counts)), self._kept)
        shape = input_shape(layer, module)
        weights = tuple(tuple(t.shape) for t in module.state_dict().values())
        key = f"{type(module).__module__}.{module!r}|{weights}|{shape}|{self.device.type}"
        if key not in self.times:
            dense = self._counts(layer, {})
            if counts == dense:
                self.times[key] = time_module(module, shape, self.device, self.threads, self.repeats)
            else:  # timed against the dense layer, interleaved: a busy moment slows both
                reference = self.layer_ms(layer, {})
                ref_module = cut_layer(layer, dict(zip(layer.groups, dense)), self._kept)
                ratio = time_ratio(
                    module, shape, ref_module, input_shape(layer, ref_module), self.device, self.threads, self.repeats
                )
                self.times[key] = reference * ratio
            self.measured += 1
        self._memo[(layer.name, counts)] = self.times[key]
        return self.times[key]

    def _interpolate(self, layer: TimedLayer, counts: tuple[int, ...]) -> float:
        """Multilinear interpolation between the timed grid points around ``counts``; where a
        corner is missing, the nearest timed shape of this layer scaled by its channel product."""
        brackets = []
        for g, c in zip(layer.groups, counts):
            pts = self.grid[g]
            lo = max([p for p in pts if p <= c], default=pts[0])
            hi = min([p for p in pts if p >= c], default=pts[-1])
            brackets.append((lo, hi))
        total, ok = 0.0, True
        for corner in itertools.product(*[(0, 1) for _ in brackets]):
            point = tuple(b[i] for b, i in zip(brackets, corner))
            t = self._memo.get((layer.name, point))
            if t is None:
                ok = False
                break
            w = 1.0
            for (lo, hi), c, i in zip(brackets, counts, corner):
                f = 0.0 if hi == lo else (c - lo) / (hi - lo)
                w *= f if i else 1.0 - f
            total += w * t
        if ok:
            return total
        known = [(k[1], t) for k, t in self._memo.items() if k[0] == layer.name]
        if not known:
            return self.layer_ms(layer, dict(zip(layer.groups, counts)), measure=True)
        near, t = min(known, key=lambda kt: sum(abs(math.log(a / b)) for a, b in zip(kt[0], counts)))
        return t * math.prod(counts) / math.prod(near)

    def compare(self, channels: Mapping[str, int], max_time_s: float = 10.0) -> LatencyComparison:
        """The model cut to ``channels`` (on a copy) against the dense model, by :func:`compare_latency`."""

        pruned = copy.deepcopy(self.model)
        if channels:
            prune_to(pruned, self.example_inputs, dict(channels), self.criterion)
        return compare_latency(
            self.model, pruned, self.example_inputs, self.batch_size, max_time_s=max_time_s, threads=self.threads
        )

    def calibrate(self, max_time_s: float = 10.0, keeps: tuple[float, ...] = (0.8, 0.6, 0.4)) -> None:
        """Fit the rest (what the timed layers leave out, and how the model in one piece differs
        from its layers timed alone) as ``fixed + per_volume x activation volume`` to measured
        latency ratios: every group at each of ``keeps`` of its channels, each timed interleaved
        against the dense model. Only the measured *ratios* are used (they cancel the machine's
        load; absolute model times do not, and layers are timed at their fastest), so predicted
        ms are the unloaded estimate. At batch 1 the rest is mostly per-op overhead (fixed); at
        large batches, elementwise work and memory traffic (with the activations). The terms
        are a least-squares fit; the fixed term may be negative (a layer alone can run slower than inside
        the model) as long as every model the table can describe keeps a positive time; the
        per-volume term is never negative (more activations never take less time)."""
        points = [self.uniform(k) for k in keeps]
        self.calibration = [self.compare(p, max_time_s) for p in points]
        ld, vd = self.layers_ms({}), self._dense_volume
        # ratio r = (L + F + P V) / (ld + F + P vd)  <=>  F (1 - r) + P (V - r vd) = r ld - L
        rows = [
            (1 - c.ratio, self.volume(p) - c.ratio * vd, c.ratio * ld - self.layers_ms(p))
            for p, c in zip(points, self.calibration)
        ]
        smallest = {g: pts[0] for g, pts in self.grid.items()}
        ls, vs = self.layers_ms(smallest), self.volume(smallest)

        def positive(fit: tuple[float, float]) -> bool:
            return min(ls + fit[0] + fit[1] * vs, ld + fit[0] + fit[1] * vd) > 0.05 * ls

        def residual(fit: tuple[float, float]) -> float:
            return sum((a * fit[0] + b * fit[1] - y) ** 2 for a, b, y in rows)

        fits = [_least_squares(rows), (0.0, 0.0)]
        for k in (0, 1):  # one term (the per-volume one non-negative)
            xs = [r[k] for r in rows]
            den = sum(x * x for x in xs)
            c = sum(x * r[2] for x, r in zip(xs, rows)) / den if den > 0 else 0.0
            fits.append((c, 0.0) if k == 0 else (0.0, max(0.0, c)))
        ok = [f for f in fits if f is not None and f[1] >= 0 and positive(f)]
        self.rest_fixed, self.rest_per_volume = min(ok, key=residual)
        self.dense_ms = ld + self.rest_fixed + self.rest_per_volume * vd
        self.curve = monotone_curve(
            [(self.base_ms(p) / self.dense_ms, c.ratio) for p, c in zip(points, self.calibration)] + [(1.0, 1.0)]
        )

    # -- prediction -----------------------------------------------------------------------
    def volume(self, channels: Mapping[str, int], layers: list[TimedLayer] | None = None) -> float:
        """Output elements of the timed layers (or of ``layers``) at ``channels``: what the
        elementwise ops between them scale with."""
        vol = 0.0
        for layer in self.layers if layers is None else layers:
            dense = layer.out_shape[layer.out_axis]
            kept = dense
            for p in layer.parts:
                if p.dim == 0 and p.group in channels:
                    kept -= int((~self._kept(p.group, channels[p.group])[p.channels]).sum())
            vol += math.prod(layer.out_shape) * kept / max(1, dense)
        return vol

    def layers_ms(self, channels: Mapping[str, int], measure: bool = True) -> float:
        """Sum of the timed layers' ms at ``channels``."""
        return sum(self.layer_ms(layer, channels, measure) for layer in self.layers)

    def base_ms(self, channels: Mapping[str, int], measure: bool = True) -> float:
        """The sum of the layers' times at ``channels`` plus the fitted rest, in unloaded ms."""
        self._check(channels)
        return self.layers_ms(channels, measure) + self.rest_fixed + self.rest_per_volume * self.volume(channels)

    def correct(self, base_ratio: float) -> float:
        """A ratio of :meth:`base_ms` to the dense model's as the measured ratio it stands for:
        the monotone piecewise-linear curve through the calibration's (base, measured) points and
        (1, 1); below the smallest point, proportional to it. It carries what no sum of layers
        timed one by one sees (a model whose activations no longer fit the caches speeds up more
        than its layers say) into the prediction."""
        pts = self.curve
        if base_ratio <= pts[0][0]:
            return pts[0][1] * base_ratio / pts[0][0]
        for (b0, m0), (b1, m1) in zip(pts, pts[1:]):
            if base_ratio <= b1:
                return m0 + (m1 - m0) * (base_ratio - b0) / (b1 - b0)
        return base_ratio * pts[-1][1] / pts[-1][0]

    def uncorrect(self, ratio: float) -> float:
        """The base ratio whose :meth:`correct` is ``ratio``."""
        pts = self.curve
        if ratio <= pts[0][1]:
            return pts[0][0] * ratio / pts[0][1]
        for (b0, m0), (b1, m1) in zip(pts, pts[1:]):
            if ratio <= m1:
                return b0 + (b1 - b0) * (ratio - m0) / (m1 - m0) if m1 > m0 else b0
        return ratio * pts[-1][0] / pts[-1][1]

    def predict_ratio(self, channels: Mapping[str, int], measure: bool = True) -> float:
        """Predicted latency ratio to the dense model of ``{group: channels}`` (missing groups:
        all channels): the layers' times plus the rest (:meth:`base_ms`), through :meth:`correct`."""
        return self.correct(self.base_ms(channels, measure) / self.dense_ms)

    def predict(self, channels: Mapping[str, int], measure: bool = True) -> float:
        """Predicted ms of the model with ``{group: channels}``: :meth:`predict_ratio` x the dense
        model's unloaded estimate."""
        return self.predict_ratio(channels, measure) * self.dense_ms

    def affected(self, group: str) -> list[TimedLayer]:
        """The layers whose shape ``group``'s channel count changes (its producers and consumers)."""
        return [layer for layer in self.layers if group in layer.groups]

    def _check(self, channels: Mapping[str, int]) -> None:
        for g, c in channels.items():
            if g not in self.groups:
                raise ValueError(
                    f"channels names {g!r}, which is not a prunable group; groups: {', '.join(self.groups)}"
                )
            n, frozen = self.groups[g]
            if not max(1, frozen) <= int(c) <= n:
                raise ValueError(f"channels[{g!r}]={c}: keep an integer in [{max(1, frozen)}, {n}]")

    # -- building, caching, checking ------------------------------------------------------
    def build(self, progress: Progress | None = None) -> LatencyTable:
        """Time every group's layers at every count of its grid (the others dense); save the cache."""
        names = list(self.groups)
        for i, g in enumerate(names, start=1):
            if progress is not None:
                progress(i, len(names), g)
            for c in self.grid[g]:
                for layer in self.affected(g):
                    self.layer_ms(layer, {g: c})
        self.save()
        return self

    def save(self) -> None:
        """Merge the timed shapes into the cache file (atomically); no-op without ``cache_dir``."""
        if self.path is None:
            return
        times = {}
        if self.path.exists():
            try:
                times = json.loads(self.path.read_text(encoding="utf-8")).get("times", {})
            except (OSError, ValueError):
                times = {}
        times.update(self.times)
        atomic_write_json(self.path, {"meta": self.meta, "times": times})

    def check(self, assignments: Mapping[str, Mapping[str, int]] | None = None, max_time_s: float = 10.0) -> list[dict]:
        """Predicted vs measured latency: each assignment cut from a copy of the model and timed
        against the dense model by :func:`compare_latency` (``measured_ratio`` is its ratio).

        Default assignments: every group at about 70% and 50% of its channels (on the grid;
        between the calibration's points, not on them).
        Returns rows with ``predicted_ratio`` and ``measured_ratio`` (to the dense model) and
        ``ratio_error`` (predicted / measured - 1), plus ``predicted_ms`` (the unloaded estimate)
        and ``measured_ms`` (the median measured now, load included)."""
        if assignments is None:
            assignments = {f"keep{int(f * 100)}": self.uniform(f) for f in (0.7, 0.5)}
        rows = []
        for label, channels in assignments.items():
            cmp = self.compare(channels, max_time_s)
            predicted = self.predict(channels)
            rows.append(
                {
                    "assignment": label,
                    "predicted_ms": predicted,
                    "measured_ms": cmp.median_b_ms,
                    "predicted_ratio": predicted / self.dense_ms,
                    "measured_ratio": cmp.ratio,
                    "ratio_error": predicted / self.dense_ms / cmp.ratio - 1.0,
                }
            )
        self.save()
        return rows

    def uniform(self, keep: float) -> dict[str, int]:
        """Every group at the largest grid count not above ``keep`` x its channels (at least its smallest)."""
        out = {}
        for g, (n, _) in self.groups.items():
            pts = self.grid[g]
            out[g] = max([p for p in pts if p <= keep * n], default=pts[0])
        return out


def monotone_curve(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """``(x, y)`` points sorted by x with y made increasing (adjacent violators pooled to their
    mean, as isotonic regression does, then a slope of 0.001 kept between pooled points): a
    measured ratio never falls as the base grows."""
    blocks: list[tuple[list[float], float]] = []  # (x values, mean y) per pooled block
    for x, y in sorted(points):
        xs, mean = [x], y
        while blocks and blocks[-1][1] > mean:
            prev_xs, prev_mean = blocks.pop()
            mean = (prev_mean * len(prev_xs) + mean * len(xs)) / (len(prev_xs) + len(xs))
            xs = prev_xs + xs
        blocks.append((xs, mean))
    out: list[tuple[float, float]] = []
    for x, y in ((x, mean) for xs, mean in blocks for x in xs):  # pooled points: a slight slope, not a flat step
        out.append((x, y if not out else max(y, out[-1][1] + 1e-3 * (x - out[-1][0]))))
    return out


def _least_squares(rows: list[tuple[float, float, float]]) -> tuple[float, float] | None:
    """``(x, y)`` minimising the squared residuals of ``a x + b y = c`` over ``rows``; None if singular."""
    saa = sum(a * a for a, _, _ in rows)
    sbb = sum(b * b for _, b, _ in rows)
    sab = sum(a * b for a, b, _ in rows)
    sac = sum(a * c for a, _, c in rows)
    sbc = sum(b * c for _, b, c in rows)
    det = saa * sbb - sab * sab
    if abs(det) <= 1e-12 * max(1.0, saa * sbb):
        return None
    return (sac * sbb - sbc * sab) / det, (saa * sbc - sab * sac) / det


def forget_timings() -> None:
    """Drop the layer times this process remembers (the disk caches stay): the next table times afresh."""
    _PROCESS_TIMES.clear()


def latency_table(
    model: nn.Module,
    example_inputs: Any,
    batch_size: int = 1,
    grid: int = 8,
    cache_dir: str | os.PathLike | None = None,
    *,
    threads: int | None = None,
    repeats: int = 5,
    ignore: tuple[str, ...] | list[str] = (),
    criterion: Any = "l1",
    max_points: int = 16,
    calibrate_s: float = 10.0,
    build: bool = True,
    progress: Progress | None = None,
) -> LatencyTable:
    """A :class:`LatencyTable` of ``model`` at ``batch_size`` that has timed every group's layers
    on its grid of channel counts (multiples of ``grid``, at most about ``max_points`` per group;
    ``build=False`` times shapes only when a prediction needs them). ``cache_dir``: keep the
    times in a JSON file there (keyed by device, threads, torch version, batch size; entries by
    shape). ``criterion``: the one the cut will use; it decides which channels a group keeps,
    and so the shapes of layers that hold only some of a group's channels (option-A shortcuts).
    ``calibrate_s`` caps each of the two comparisons that fit the untimed rest
    (:meth:`LatencyTable.calibrate`). ``table.build_seconds`` is the wall time this took."""
    start = time.perf_counter()
    table = LatencyTable(
        model,
        example_inputs,
        batch_size,
        grid,
        cache_dir,
        threads=threads,
        repeats=repeats,
        ignore=ignore,
        criterion=criterion,
        max_points=max_points,
        calibrate_s=calibrate_s,
    )
    if build:
        table.build(progress)
    table.build_seconds = time.perf_counter() - start
    return table


def round_auto(
    model: nn.Module,
    example_inputs: Any,
    planned: Mapping[str, tuple[int, int]],
    ignore: tuple[str, ...] | list[str] = (),
    multiples: tuple[int, ...] = (1, 8, 16),
    tie: float = 0.02,
) -> dict[str, tuple[int, int]]:
    """``round_to="auto"``: per group, its planned count rounded *up* to each of ``multiples``
    (never past the dense count), and the one whose layers the table times fastest kept; within
    ``tie`` of the fastest the larger count wins. So a group never keeps fewer channels than
    its ratio asks, and keeps more where the hardware runs them at no extra cost (aligned
    channel counts often are). ``planned``: ``{group: (channels, kept)}`` as
    :func:`pruning.planned_channels` returns it; timed at ``example_inputs``' batch size."""
    first = example_inputs[0] if isinstance(example_inputs, tuple) else example_inputs
    batch = int(first.shape[0]) if torch.is_tensor(first) and first.dim() > 0 else 1
    table = LatencyTable(model, example_inputs, batch, 8, repeats=3, ignore=ignore, calibrate_s=0)
    current = {g: k for g, (c, k) in planned.items() if k < c}
    for g, k in list(current.items()):
        n = table.groups[g][0]
        times = {}
        for c in sorted({min(n, -(-k // m) * m) for m in multiples}):
            trial = {**current, g: c}
            times[c] = sum(table.layer_ms(layer, trial) for layer in table.affected(g))
        fastest = min(times.values())
        current[g] = max(c for c, t in times.items() if t <= fastest * (1 + tie))
    return {g: (c, current.get(g, k)) for g, (c, k) in planned.items()}
