"""Power analysis before a sweep: how many seeds each lesson needs, per lesson family.

Per lesson: the SD of the paired differences (declared, or pooled over the lesson's
comparisons in a pilot store) and the fewest seeds whose paired t-test detects the declared
effect, and whose TOST shows equivalence within the margin, with power 0.8 at alpha / m
(m comparisons in the family); ``seeds needed`` is the larger. A pilot SD is planned at its
one-sided 80% upper confidence limit, a declared one as known; a pilot SD with fewer than
4 degrees of freedom (5 seeds; comparisons sharing an arm count their seeds once) plans
nothing. ``--seeds N`` adds the minimal detectable effect at N seeds (the smallest true
difference the lesson's test finds with that power), to set beside the lesson's smallest
effect that matters (:mod:`analysis.lessons`). With a store, a lesson whose compared arms
all sit at chance on its endpoint (within 3 standard errors of 1 / classes, or closer to it
than the lesson's smallest effect) is "not measurable at this endpoint": no seed count would
make its verdict informative, so ``--max`` leaves it out. The calculation and its references:
:mod:`analysis.planning`.

    python -m analysis.power --sd 0.3 --effect 0.25 --seeds 12        # declared SD (pp); MDE at 12 seeds
    python -m analysis.power --store results --seeds 12               # pilot: pooled SD, seeds and MDE per lesson
    python -m analysis.power --store results --study all --max        # seeds for the lessons study=all runs
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from analysis.arms import Arm, build_arms
from analysis.lessons import LESSONS, Lesson
from analysis.load import Store, StoreLike, read_store
from analysis.pairing import pairings
from analysis.parts import chance_accuracy
from analysis.planning import LIMIT, MIN_PILOT_SEEDS, minimal_detectable_effect, plan
from analysis.stats import mean_std
from analysis.verdicts import compare, pooled_sd

CONF = Path(__file__).resolve().parent.parent / "conf"
"""The Hydra config tree (``--study`` reads the study's arm list from it)."""


def power_table(
    effect: float | None = None,
    sd: float | None = None,
    store: str | Path | None = None,
    alpha: float = 0.05,
    power: float = 0.8,
    comparisons: int = 1,
    arms: Sequence[str] | None = None,
    seeds: int | None = None,
) -> pd.DataFrame:
    """Per lesson: the SD used (declared, or pooled over that lesson's comparisons in ``store``), the seeds
    needed and, with ``seeds``, the minimal detectable effect at that many seeds.

    Values in percent points. ``effect`` None: each lesson's declared smallest effect. ``arms``: plan from
    the store's runs of these arms only (a run without ``arm=`` counts as its strategy), so lessons no
    such pair compares are left out of the pilot SD. With a store, lessons at chance are "not measurable".
    """
    pooled: dict[str, tuple[float, int, int]] = {}
    chance: dict[str, str] = {}
    if store is not None:
        runs = only_arms(store, arms) if arms is not None else read_store(store)
        pooled = pooled_sd(compare(runs))
        chance = at_chance(runs)
    rows = []
    codes = {lesson.code: lesson for lesson in reversed(LESSONS)}  # the first declaration of each family
    for code in dict.fromkeys(lesson.code for lesson in LESSONS):
        lesson, claims = codes[code], "; ".join(x.claim for x in LESSONS if x.code == code)
        margin = lesson.margin * 100
        size = effect if effect is not None else lesson.effect * 100
        if sd is not None:
            s, dof, m, source = sd, None, comparisons, "declared"
        elif code in pooled:
            s, dof, m = pooled[code]
            s, source = s * 100, f"pooled over {m} comparisons of the store"
        else:
            rows.append({"lesson": code, "claim": claims, "sd source": "no pilot runs in the store"})
            continue
        measurable = {"measurable": chance.get(code, "yes")} if store is not None else {}
        if dof is not None and dof < MIN_PILOT_SEEDS - 1:
            few = f"pilot too small: {dof} df, planning needs >= {MIN_PILOT_SEEDS - 1} ({MIN_PILOT_SEEDS} seeds)"
            rows.append({"lesson": code, "claim": claims, "sd source": few, "sd (pp)": round(s, 4), "sd dof": dof})
            rows[-1].update({"seeds needed": TOO_SMALL, **measurable})
            continue
        p = plan(s, size, margin, alpha, power, max(1, m), dof)
        detectable = {}
        if seeds is not None:
            mde = minimal_detectable_effect(seeds, p.sd_planned, p.alpha, power)
            detectable = {f"mde at {seeds} seeds (pp)": round(mde, 4)}
        needed: int | str = p.seeds if p.seeds is not None else f"> {LIMIT}"
        if code in chance:
            needed = NOT_MEASURABLE
        rows.append(
            {
                "lesson": code,
                "claim": claims,
                "sd source": source,
                "sd (pp)": round(s, 4),
                "sd dof": dof,
                "sd planned (pp)": round(p.sd_planned, 4),
                "effect (pp)": size,
                "margin (pp)": margin,
                "comparisons": p.comparisons,
                "alpha per comparison": round(p.alpha, 5),
                "seeds: difference": p.difference,
                "seeds: equivalence": p.equivalence,
                "seeds: normal approx.": p.normal,
                "seeds needed": needed,
                **detectable,
                **measurable,
            }
        )
    return pd.DataFrame(rows)


TOO_SMALL = "pilot too small"
NOT_MEASURABLE = "not measurable"
NEAR_CHANCE_SE = 3.0
"""An arm sits at chance when its mean is within this many standard errors of 1 / classes (or closer
to it than the lesson's smallest effect that matters)."""


def arm_at_chance(arm: Arm, endpoint: str, effect: float) -> tuple[bool, str] | None:
    """(whether ``arm``'s mean ``endpoint`` sits at chance, a description), None without data or class count."""
    level = chance_accuracy(arm.dataset, arm.raw_config)
    mean, std, n = mean_std(list(arm.metric(endpoint).values()))
    if level is None or n == 0:
        return None
    se = std / math.sqrt(n) if n > 1 else 0.0
    return mean - level <= max(NEAR_CHANCE_SE * se, effect), f"{arm.label} {mean * 100:.1f}% (SE {se * 100:.1f})"


def at_chance(store: StoreLike, lessons: Sequence[Lesson] = LESSONS) -> dict[str, str]:
    """Per lesson family whose every valid comparison has both arms at chance on its endpoint: why."""
    arms = build_arms(store)
    out: dict[str, str] = {}
    for code in dict.fromkeys(lesson.code for lesson in lessons):
        family = [lsn for lsn in lessons if lsn.code == code]
        checked = [
            (lsn, arm_at_chance(arm, lsn.endpoint, lsn.effect))
            for lsn in family
            for pair in pairings(lsn, arms)
            if pair.ok
            for arm in (pair.a, pair.b)
        ]
        if checked and all(c is not None and c[0] for _, c in checked):
            lsn = family[0]
            level = chance_accuracy(arms[0].dataset, arms[0].raw_config) if arms else None
            shown = "; ".join(dict.fromkeys(c[1] for _, c in checked if c is not None))
            out[code] = (
                f"not measurable at this endpoint ({lsn.endpoint}): every arm within {NEAR_CHANCE_SE:g} SE or "
                f"{lsn.effect * 100:g} pp of chance ({(level or math.nan) * 100:g}%): {shown}"
            )
    return out


def only_arms(store: str | Path, arms: Sequence[str]) -> Store:
    """The store's rows of the named arms only."""
    full, wanted = read_store(store), set(arms)
    rows = [r for r in full.rows if (r.get("arm") or r.get("strategy")) in wanted]
    return replace(full, rows=rows)


def study_arms(study: str, conf: str | Path = CONF) -> list[str]:
    """The arms ``python run.py -m study=<study>`` sweeps (``hydra.sweeper.params.arm`` of conf/study/<study>.yaml)."""
    path = Path(conf) / "study" / f"{study}.yaml"
    if not path.is_file():
        known = sorted(f.stem for f in path.parent.glob("*.yaml"))
        raise ValueError(f"--study {study}: no {path}; allowed values: {', '.join(known)}")
    arms = OmegaConf.select(OmegaConf.load(path), "hydra.sweeper.params.arm")
    if not arms:
        raise ValueError(f"--study {study}: {path} sweeps no arms (hydra.sweeper.params.arm)")
    return [a.strip() for a in str(arms).split(",") if a.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sd", type=float, default=None, help="declared SD of the paired differences (pp)")
    parser.add_argument("--store", default=None, help="pilot store: pooled SD of the paired differences per lesson")
    parser.add_argument(
        "--effect", type=float, default=None, help="smallest effect worth detecting (pp; default: margin)"
    )
    parser.add_argument("--alpha", type=float, default=0.05, help="family-wise level (default 0.05)")
    parser.add_argument("--power", type=float, default=0.8, help="power (default 0.8)")
    parser.add_argument("--comparisons", type=int, default=1, help="comparisons per lesson with --sd (default 1)")
    parser.add_argument("--seeds", type=int, default=None, help="also the minimal detectable effect at this many seeds")
    parser.add_argument(
        "--max", action="store_true", help="print only the largest seed count over the measurable lessons"
    )
    parser.add_argument("--arms", default=None, help="with --store: plan from these arms' runs only (comma-separated)")
    parser.add_argument("--study", default=None, help="with --store: plan from the arms conf/study/<STUDY>.yaml sweeps")
    args = parser.parse_args(argv)
    if args.sd is None and args.store is None:
        parser.error("give --sd (declared SD in pp) or --store (a pilot results store)")
    arms = [a.strip() for a in args.arms.split(",") if a.strip()] if args.arms else None
    if args.study is not None:
        try:
            arms = (arms or []) + study_arms(args.study)
        except ValueError as err:
            parser.error(str(err))
    if args.seeds is not None and args.seeds < 2:
        parser.error(f"--seeds {args.seeds}: a paired t-test needs at least 2 seeds")
    table = power_table(args.effect, args.sd, args.store, args.alpha, args.power, args.comparisons, arms, args.seeds)
    if args.max:
        needed = table.get("seeds needed", pd.Series(dtype=object)).dropna()
        unplanned = needed.isin([NOT_MEASURABLE, TOO_SMALL])
        for code, why in zip(table.loc[unplanned[unplanned].index, "lesson"], needed[unplanned]):
            print(f"{code}: {why}, left out of the count", file=sys.stderr)
        needed = needed[~unplanned]
        if needed.empty:
            print("no lesson has an SD to plan from", file=sys.stderr)
            return 1
        counts = [LIMIT if isinstance(n, str) else int(n) for n in needed]  # "> LIMIT": at least the limit
        print(max(counts))
        return 0
    if args.sd is not None and args.seeds is not None:
        level = args.alpha / max(1, args.comparisons)
        mde = minimal_detectable_effect(args.seeds, args.sd, level, args.power)
        size = (
            f"; an effect of {args.effect:g} pp is {'' if mde <= args.effect else 'not '}detectable"
            if args.effect
            else ""
        )
        print(
            f"minimal detectable effect at {args.seeds} seeds: {mde:.3f} pp (SD of the paired differences "
            f"{args.sd:g} pp, two-sided paired t-test at alpha {level:g}, power {args.power:g}){size}"
        )
    print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
