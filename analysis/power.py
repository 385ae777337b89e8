"""Power analysis before a sweep: how many seeds each lesson needs, per lesson family.

Per lesson: the SD of the paired differences (declared, or pooled over the lesson's
comparisons in a pilot store) and the fewest seeds whose paired t-test detects the declared
effect, and whose TOST shows equivalence within the margin, with power 0.8 at alpha / m
(m comparisons in the family); ``seeds needed`` is the larger. A pilot SD is planned at its
one-sided 80% upper confidence limit, a declared one as known. The calculation and its
references: :mod:`analysis.planning`.

    python -m analysis.power --sd 0.2 --effect 0.25                   # declared SD, in percent points
    python -m analysis.power --store results --effect 0.25            # pilot: pooled SD per lesson
    python -m analysis.power --store results --study all --max        # seeds for the lessons study=all runs
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from analysis.lessons import LESSONS
from analysis.load import Store, read_store
from analysis.planning import LIMIT, plan
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
) -> pd.DataFrame:
    """Per lesson: the SD used (declared, or pooled over that lesson's comparisons in ``store``) and the seeds needed.

    Values in percent points. ``effect`` None: each lesson's declared margin. ``arms``: plan from the
    store's runs of these arms only (a run without ``arm=`` counts as its strategy), so lessons no
    such pair compares are left out of the pilot SD.
    """
    pooled: dict[str, tuple[float, int, int]] = {}
    if store is not None:
        pooled = pooled_sd(compare(only_arms(store, arms) if arms is not None else store))
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
        p = plan(s, size, margin, alpha, power, max(1, m), dof)
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
                "seeds needed": p.seeds if p.seeds is not None else f"> {LIMIT}",
            }
        )
    return pd.DataFrame(rows)


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
    parser.add_argument("--max", action="store_true", help="print only the largest seed count over the lessons")
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
    table = power_table(args.effect, args.sd, args.store, args.alpha, args.power, args.comparisons, arms)
    if args.max:
        needed = table.get("seeds needed", pd.Series(dtype=object)).dropna()
        if needed.empty:
            print("no lesson has an SD to plan from", file=sys.stderr)
            return 1
        counts = [LIMIT if isinstance(n, str) else int(n) for n in needed]  # "> LIMIT": at least the limit
        print(max(counts))
        return 0
    print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
