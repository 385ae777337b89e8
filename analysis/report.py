"""The whole report: every figure and table the runs support, the lesson verdicts and the store's problems.

Writes ``<out>/index.md`` and ``<out>/index.html`` (images by relative path) next to the
PNG/SVG/CSV/Markdown/LaTeX files. With no runs it says what to run, still writes an index
saying so, and exits 0.

    python -m analysis.report --store results --out reports
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from analysis import (
    baseline_schedules,
    compression,
    criteria,
    forest,
    latency,
    layer_criteria,
    lessons,
    paper_comparison,
    power,
    seeds,
    sensitivity,
    speed,
    strategy_table,
    tradeoff,
    verdicts,
)
from analysis.arms import build_arms
from analysis.index_page import Section, write_index
from analysis.load import Store, load_runs, read_store
from analysis.output import NoData, provenance
from analysis.verdict_table import RESULTS_TEXT, results_table

EXAMPLE = "python run.py -m strategy=l1_oneshot,l1_iterative seed=0,1,2"


def _figure(
    title: str, make: Callable[[Store, Path], object], names: Sequence[str], what: str
) -> Callable[[Store, Path], Section]:
    def build(store: Store, out: Path) -> Section:
        make(store, out)
        section = Section(title, text=[what])
        for name in names:
            if (out / f"{name}.png").exists():
                section.images.append((f"{name}.png", name))
                section.files += [f"{name}.svg", f"{name}.csv"]
        return section

    return build


def _sensitivity(store: Store, out: Path) -> Section:
    made, reasons = [], []
    for name, make in (
        ("sensitivity", sensitivity.sensitivity_figure),
        ("filter_norms", sensitivity.filter_norms_figure),
    ):
        try:
            make(store, out)
            made.append(name)
        except NoData as err:
            reasons.append(str(err))
    if not made:
        raise NoData("; ".join(reasons))
    section = Section(
        "Sensitivity and filter norms (Li et al. 2017, Fig. 2a-b)",
        text=["Accuracy after pruning one group alone, no retraining; baseline filters sorted by L1 norm."]
        + [f"Not shown: {r}" for r in reasons],
    )
    for name in made:
        section.images.append((f"{name}.png", name))
        section.files += [f"{name}.svg", f"{name}.csv"]
    return section


def _table(
    title: str, write: Callable[[Store, Path], tuple[pd.DataFrame, pd.DataFrame]], name: str, what: str
) -> Callable[[Store, Path], Section]:
    def build(store: Store, out: Path) -> Section:
        _, shown = write(store, out)
        return Section(title, text=[what], tables=[shown], files=[f"{name}.md", f"{name}.tex", f"{name}.csv"])

    return build


def _compression(store: Store, out: Path) -> Section:
    compression.build(store, out)
    table = compression.compression_table(compression.storage_long(store)[0])
    return Section(
        "Compression breakdown (Deep Compression, Table 1)",
        text=["Bytes per layer after pruning, quantization and Huffman coding; rate = dense / stage."],
        images=[("compression.png", "compression")],
        tables=[compression.shown_table(table)],
        files=["compression.svg", "compression.csv", "compression_table.md", "compression_table.tex"],
    )


def _latency(store: Store, out: Path) -> Section:
    latency.latency_pareto_figure(store, out)  # NoData when no run measured latency
    section = Section(
        "Accuracy vs measured latency",
        text=[
            "Test accuracy vs the final model's latency as a fraction of its baseline's (both timed interleaved in "
            "the run), with the Pareto front of the arms; then the latency a latency table predicted vs the measured."
        ],
        images=[("latency_pareto.png", "latency_pareto")],
        files=["latency_pareto.svg", "latency_pareto.csv"],
    )
    try:
        latency.latency_prediction_figure(store, out)
        section.images.append(("latency_prediction.png", "latency_prediction"))
        section.files += ["latency_prediction.svg", "latency_prediction.csv"]
    except NoData as err:
        section.text.append(f"Not shown: {err}")
    return section


def _declarations(store: Store, out: Path) -> Section:
    return Section(
        "Lessons as declared (before the sweep)",
        text=[
            "Per lesson: the arms (A > B), the config keys of the part it compares, the keys that part implies "
            "(allowed to differ, shown), the one primary endpoint and the equivalence margin. Any other config "
            "difference refuses a comparison; measurement-only keys are annotated."
        ],
        tables=[lessons.declaration_table()],
    )


def _verdicts(store: Store, out: Path) -> Section:
    table, lines = verdicts.verdict_report(store, out)
    section = Section(
        "Lesson verdicts",
        text=[verdicts.rule_text(table)],
        items=lines,
        files=["verdicts_summary.md", "verdicts.md", "verdicts.tex", "verdicts.csv", "seeds.csv"],
    )
    if not table.empty:
        section.text.append(RESULTS_TEXT + " The full table (p-values, pairing, training, notes) follows it.")
        section.tables += [results_table(table), verdicts.shown_table(table)]
    try:
        forest.forest_figure(store, out, table)
        section.images.append(("forest.png", "verdict forest plot"))
        section.files += ["forest.svg", "forest.csv"]
    except NoData as err:
        section.text.append(f"No forest plot: {err}")
    return section


def _seeds(store: Store, out: Path) -> Section:
    table = seeds.write_seeds(store, out)
    if table.empty:
        raise NoData("no arm with a finished run")
    return Section(
        "Per-seed values",
        text=[
            "Every arm's value per seed (the run the verdicts use; seeds with only failed runs listed with their "
            "status): every endpoint, with the CPU model, threads and torch build the run was measured with.",
            seeds.MACHINE_TEXT + "; ".join(seeds.machines(table)) + ".",
        ],
        files=["seeds.csv"],
    )


def _secondary(store: Store, out: Path) -> Section:
    if not (out / "verdicts_secondary.csv").exists():  # written by the verdicts section when it has pairs
        raise NoData("no tested lesson comparison, so no secondary endpoints")
    return Section(
        "Secondary endpoints of the verdict pairs",
        text=[verdicts.SECONDARY_TEXT],
        tables=[verdicts.shown_secondary(pd.read_csv(out / "verdicts_secondary.csv"))],
        files=["verdicts_secondary.md", "verdicts_secondary.tex", "verdicts_secondary.csv"],
    )


def _baselines(store: Store, out: Path) -> Section:
    runs, gains = baseline_schedules.write_schedules(store, out)
    return Section(
        "Baselines: does more training move accuracy?",
        text=[
            "Every seed's baseline per schedule: epochs trained, test accuracy, and the plateau rule's verdict on its "
            "validation curve (rise: best of its last epochs minus the best before, in points). An annealed schedule's "
            "last epochs can rise with its falling learning rate whether or not more epochs would help; what more training gives is the paired gain of a longer schedule on the same "
            "seeds (second table, 95% interval), when the store has one."
        ],
        images=[("baseline_schedules.png", "validation curves and test accuracy per schedule")],
        files=["baseline_schedules.svg", "baseline_schedules.csv", "baseline_gains.csv"],
        tables=[baseline_schedules.shown_runs(runs)] + ([gains.round(3)] if not gains.empty else []),
    )


def _power(store: Store, out: Path) -> Section:
    plan = power.power_table(store=store)
    if "seeds needed" not in plan:
        raise NoData("no lesson comparison with >= 2 seeds to take a pilot SD from")
    return Section(
        "Seeds a powered sweep needs",
        text=[
            "Per lesson, from this store as a pilot: the pooled SD of the paired differences (its degrees of "
            "freedom), planned at its one-sided 80% upper limit; power 0.8 at alpha / comparisons for the declared "
            "effect and for equivalence within the margin (noncentral t; exact sign test where every difference "
            "was identical). `python -m analysis.power --sd S --effect E` plans from a declared SD instead."
        ],
        tables=[plan],
    )


BUILDERS: tuple[tuple[str, Callable[[Store, Path], Section]], ...] = (
    ("lesson declarations", _declarations),
    ("verdicts", _verdicts),
    ("per-seed values", _seeds),
    ("secondary endpoints", _secondary),
    ("seeds needed", _power),
    ("baselines", _baselines),
    (
        "strategy table",
        _table(
            "Strategies",
            strategy_table.write_strategy_table,
            "strategy_table",
            "Accuracy change (final - baseline), MAC and parameter reduction, retraining cost; mean ± std over seeds.",
        ),
    ),
    (
        "paper comparison",
        _table(
            "Paper comparison",
            paper_comparison.write_paper_table,
            "paper_comparison",
            "Our result next to the paper's for each paper preset; note our dataset column.",
        ),
    ),
    ("sensitivity", _sensitivity),
    (
        "criteria",
        _figure(
            "Pruning criteria (Li et al. 2017, Fig. 2c)",
            criteria.criteria_figure,
            ["criteria"],
            "Smallest L1 vs random vs largest L1 vs the others, with and without retraining.",
        ),
    ),
    (
        "criteria per layer",
        _figure(
            "Criteria per layer without retraining (Li et al. 2017, Fig. 2c)",
            layer_criteria.layer_criteria_figure,
            ["layer_criteria"],
            "Validation accuracy after pruning one group alone with each criterion, no retraining; chance dotted.",
        ),
    ),
    (
        "trade-off",
        _figure(
            "Accuracy vs compression (Han et al. 2015, Fig. 5)",
            tradeoff.tradeoff_figure,
            ["tradeoff"],
            "Accuracy vs fraction of weights and of MACs removed, one line per strategy.",
        ),
    ),
    ("compression", _compression),
    (
        "speed",
        _figure(
            "Speed vs MACs",
            speed.speed_figure,
            ["speed"],
            "Measured latency ratio vs MAC ratio at batch 1 and the largest batch; ideal y = x.",
        ),
    ),
    ("latency", _latency),
)


def problem_section(store: Store | None, runs: pd.DataFrame | None) -> Section:
    """Malformed rows (file:line), superseded duplicates and failed or interrupted runs."""
    section = Section("Problems in the store")
    if store is not None:
        section.items += [f"skipped {p}" for p in store.problems]
        section.items += [f"duplicate {p}" for p in store.superseded]
        for arm in build_arms(store):  # same arm (configs equal but for ignored keys such as threads) and seed
            for seed, rows in sorted(arm.duplicates.items()):
                section.items.append(
                    f"duplicate runs of {arm.label} seed {seed}: {', '.join(r['run_id'] for r in rows)} and "
                    f"{arm.by_seed[seed]['run_id']}; only the latest ({arm.by_seed[seed]['run_id']}) enters the verdicts"
                )
    if runs is not None and not runs.empty:
        for _, r in runs[runs["status"] != "ok"].iterrows():
            section.items.append(
                f"{r['status']} run {r['run_id']} ({r['source']}, {r['strategy']}, seed {r['seed']}): "
                f"{r.get('error_type') or '?'} in {r.get('error_phase') or '?'}: {r.get('error_message') or ''}"
            )
        for _, r in runs[(runs["status"] == "ok") & runs["diverged"]].iterrows():
            section.items.append(
                f"diverged run {r['run_id']} ({r['source']}, {r['strategy']}, seed {r['seed']}): final acc "
                f"{r['final/acc']:.3f}, chance {r['chance']:.2f}; kept in every table and verdict"
            )
    if not section.items:
        section.text.append("None: every row parsed, no duplicates, no failed runs.")
    return section


def build_report(
    store_path: str | Path = "results",
    out: str | Path = "reports",
    wandb_dir: str | Path | None = None,
    wandb_project: str | None = None,
) -> tuple[list[Section], str]:
    """Build every figure and table the runs support into ``out``; return the sections and a one-line status."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        store = read_store(store_path, wandb_dir, wandb_project)
    except FileNotFoundError:
        store = None
    ok = load_runs(store) if store is not None else pd.DataFrame()
    everything = load_runs(store, status=None) if store is not None else pd.DataFrame()
    head = Section("Runs")
    if ok.empty:
        where = store.path if store is not None else Path(store_path) / "runs.jsonl"
        message = (
            f"No finished runs in {where}. Run for example `{EXAMPLE}`, then "
            f"`python -m analysis.report --store {store_path} --out {out}`."
        )
        head.text.append(message)
        sections = [head, problem_section(store, everything)]
        write_index(sections, out)
        return sections, message
    statuses = everything["status"].value_counts().to_dict()
    head.text.append(
        f"{len(ok)} finished runs from {store.path} (rows kept: "
        f"{', '.join(f'{n} {s}' for s, n in statuses.items())}); {provenance(ok)}."
    )
    head.tables.append(
        ok.groupby(["dataset", "model", "strategy"], dropna=False)["seed"]
        .agg(runs="count", seeds="nunique")
        .reset_index()
    )
    sections, skipped = [head, problem_section(store, everything)], Section("Not built (what to run)")
    for name, builder in BUILDERS:
        try:
            sections.append(builder(store, out))
        except NoData as err:
            skipped.items.append(f"{name}: {err}")
        except Exception as err:  # noqa: BLE001 - one broken figure must not lose the rest of the report
            skipped.items.append(
                f"{name}: could not be built ({type(err).__name__}: {err}); this is a bug in "
                f"analysis/{name.replace(' ', '_')} - please report it with the store"
            )
    if skipped.items:
        sections.append(skipped)
    write_index(sections, out)
    return sections, f"report of {len(ok)} runs written to {out / 'index.md'} and {out / 'index.html'}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default="results", help="folder holding runs.jsonl, or the file (default: results)")
    parser.add_argument(
        "--out", default="reports", help="folder for index.md/index.html and every figure (default: reports)"
    )
    parser.add_argument(
        "--wandb-dir", default=None, help="also read W&B offline run folders under this folder (e.g. outputs)"
    )
    parser.add_argument("--wandb-project", default=None, help="also read this W&B project (entity/project) online")
    args = parser.parse_args(argv)
    sections, message = build_report(args.store, args.out, args.wandb_dir, args.wandb_project)
    for s in sections:
        if s.title in ("Problems in the store", "Not built (what to run)", "Lesson verdicts"):
            for item in s.items:
                print(f"{s.title}: {item}", file=sys.stderr if s.title.startswith("Problems") else sys.stdout)
    print(message)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
