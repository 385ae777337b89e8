import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from analysis import criteria, output
from analysis.report import EXAMPLE, build_report, main
from tests.analysis.helpers import full_store, write_store

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    base = tmp_path_factory.mktemp("report")
    no_metrics = json.dumps(
        {
            "schema_version": 2,
            "run_id": "x",
            "seed": 4,
            "dataset": "fashion_mnist",
            "model": "vgg_small",
            "status": "ok",
        }
    )
    store = full_store(base / "results", ["{truncated", no_metrics])
    sections, message = build_report(store, base / "reports")
    return base, sections, message


def test_report_builds_every_figure_and_names_bad_rows(report):
    base, _, message = report
    out = base / "reports"
    assert "report of 24 runs" in message
    for name in ("sensitivity", "filter_norms", "criteria", "layer_criteria", "tradeoff", "compression", "speed"):
        assert (out / f"{name}.png").exists() and (out / f"{name}.svg").exists() and (out / f"{name}.csv").exists()
    for name in ("strategy_table", "paper_comparison", "verdicts", "compression_table"):
        assert (out / f"{name}.md").exists() and (out / f"{name}.tex").exists()
    index = (out / "index.md").read_text()
    store = base / "results" / "runs.jsonl"
    assert f"{store}:26: not valid JSON" in index and f"{store}:27: status ok but no metrics" in index
    assert "failed run" in index and "RuntimeError in retrain: loss is nan" in index
    assert "**L1: iterative > oneshot** (test accuracy after retraining, margin ±0.25 pp, Holm over the " in index
    assert "comparisons): 1 better; largest effect +2.60 pp (better)" in index
    # the synthetic criteria runs differ by the same amount on every seed: exact sign test, 2 / 2^3 = 0.25
    assert "**L3: l1 > other criteria, no retraining** (test accuracy right after pruning" in index
    assert "4 inconclusive; largest effect +8.00 pp (inconclusive), no t-interval (zero variance" in index
    assert "Holm" in index and "![criteria](criteria.png)" in index and "![verdict forest plot](forest.png)" in index
    assert (
        re.search(r"\| lesson +\| claim \(A > B\)", index)
        and "strategy.retrain.mode, strategy.retrain.scratch*" in index
    )
    assert "## Seeds a powered sweep needs" in index and "## Secondary endpoints of the verdict pairs" in index
    assert index.index("## Lessons as declared") < index.index("## Lesson verdicts")
    html = (out / "index.html").read_text()
    assert "<img src='criteria.png'" in html and "<b>L1: iterative &gt; oneshot</b>" in html
    assert "<img src='forest.png'" in html and "<img src='layer_criteria.png'" in html
    assert f"{store}:26" in html


def test_report_says_what_was_not_built(report):
    _, sections, _ = report
    titles = [s.title for s in sections]
    assert "Not built (what to run)" not in titles  # the full store supports everything
    verdict = next(s for s in sections if s.title == "Lesson verdicts")
    assert any("L4: finetune > scratch_e**: no comparable runs" in i for i in verdict.items)


def test_empty_store_says_what_to_run_and_exits_0(tmp_path, capsys):
    assert main(["--store", str(tmp_path / "results"), "--out", str(tmp_path / "reports")]) == 0
    printed = capsys.readouterr().out
    assert EXAMPLE in printed and "No finished runs" in printed
    assert EXAMPLE in (tmp_path / "reports" / "index.md").read_text()
    assert (tmp_path / "reports" / "index.html").exists()


def test_store_with_only_failed_runs_still_reports(tmp_path):
    write_store(tmp_path / "results", [], ["{bad"])
    sections, message = build_report(tmp_path / "results", tmp_path / "reports")
    assert "No finished runs" in message
    problems = next(s for s in sections if s.title == "Problems in the store")
    assert problems.items[0].endswith(
        "runs.jsonl:1: not valid JSON (Expecting property name enclosed in double quotes); fix or remove that line"
    )


def test_small_store_lists_what_to_run_for_the_rest(tmp_path):
    from tests.analysis.helpers import run_row

    write_store(tmp_path / "results", [run_row(s) for s in range(2)])
    sections, _ = build_report(tmp_path / "results", tmp_path / "reports")
    skipped = next(s for s in sections if s.title == "Not built (what to run)")
    assert any(i.startswith("criteria: ") and "random_oneshot" in i for i in skipped.items)
    assert any(i.startswith("sensitivity: ") for i in skipped.items)


def test_module_cli_writes_files_and_fails_helpfully(tmp_path, capsys):
    full_store(tmp_path / "results")
    assert output.cli("", criteria.build, ["--store", str(tmp_path / "results"), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "criteria.svg").exists()
    assert output.cli("", criteria.build, ["--store", str(tmp_path / "none")]) == 1
    assert "run `python run.py` first" in capsys.readouterr().err


def test_report_help_runs_as_a_module():
    done = subprocess.run(
        [sys.executable, "-m", "analysis.report", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and "--store" in done.stdout and "--out" in done.stdout


def test_duplicate_runs_of_an_arm_and_seed_are_listed(tmp_path):
    from tests.analysis.helpers import resolved_config, run_row

    first = run_row(0, config=resolved_config(0, threads=1))
    again = run_row(0, config=resolved_config(0, threads=2), time="2026-12-02T09:00:00")
    write_store(tmp_path / "results", [first, again])
    sections, _ = build_report(tmp_path / "results", tmp_path / "reports")
    problems = next(s for s in sections if s.title == "Problems in the store")
    assert (
        f"duplicate runs of l1_oneshot seed 0: {first['run_id']} and {again['run_id']}; only the latest "
        f"({again['run_id']}) enters the verdicts" in problems.items
    )
