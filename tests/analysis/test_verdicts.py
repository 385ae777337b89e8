import math

import pytest

from analysis.load import load_runs
from analysis.stats import holm, t_quantile
from analysis.verdicts import compare, rule_text, summary_lines, verdict_report
from tests.analysis.helpers import run_row, write_store


def schedule_store(path, oneshot, iterative, **kw):
    rows = [run_row(s, final_acc=a, strategy="l1_oneshot", **kw) for s, a in enumerate(oneshot)]
    rows += [
        run_row(s, final_acc=a, strategy="l1_iterative", schedule="iterative", rounds=3, **kw)
        for s, a in enumerate(iterative)
    ]
    return write_store(path, rows)


def the_line(table, claim="iterative > oneshot"):
    rows = table[table["claim"] == claim]
    assert len(rows) == 1
    return rows.iloc[0]


def test_holds_when_every_seed_agrees(tmp_path):
    schedule_store(tmp_path, oneshot=[0.880, 0.890, 0.900], iterative=[0.900, 0.911, 0.922])
    line = the_line(compare(load_runs(tmp_path)))
    assert line["n"] == 3 and line["mean"] == pytest.approx(0.021) and line["std"] == pytest.approx(0.001)
    half = t_quantile(0.975, 2) * 0.001 / math.sqrt(3)
    assert (line["ci_low"], line["ci_high"]) == pytest.approx((0.021 - half, 0.021 + half))
    assert line["verdict"] == "holds" and line["lesson"] == "L1"
    assert (line["dataset"], line["model"]) == ("fashion_mnist", "vgg_small")
    assert line["budget"] == "retrain epochs 2, baseline 2 epochs" and line["operating point"] == "ratio 0.5, uniform"


def test_flips_to_does_not_hold_when_the_effect_flips(tmp_path):
    schedule_store(tmp_path, oneshot=[0.900, 0.911, 0.922], iterative=[0.880, 0.890, 0.900])
    line = the_line(compare(load_runs(tmp_path)))
    assert line["mean"] == pytest.approx(-0.021) and line["verdict"] == "does not hold"
    assert "does not hold" in summary_lines(compare(load_runs(tmp_path)))[1]


def test_inconclusive_with_noise_and_says_how_many_seeds(tmp_path):
    schedule_store(tmp_path, oneshot=[0.90, 0.90, 0.90], iterative=[0.93, 0.88, 0.91])
    line = the_line(compare(load_runs(tmp_path)))
    assert line["ci_low"] < 0 < line["ci_high"] and line["verdict"] == "inconclusive"
    assert line["seeds_needed"] > 3


def test_one_seed_is_inconclusive(tmp_path):
    schedule_store(tmp_path, oneshot=[0.80], iterative=[0.90])
    line = the_line(compare(load_runs(tmp_path)))
    assert line["n"] == 1 and line["verdict"] == "inconclusive (needs >= 2 seeds)"


def test_pairs_by_seed_and_names_unpaired_and_diverged_seeds(tmp_path):
    rows = [run_row(s, final_acc=a, strategy="l1_oneshot") for s, a in ((0, 0.88), (1, 0.89), (2, 0.10))]
    rows += [
        run_row(s, final_acc=a, strategy="l1_iterative", schedule="iterative", rounds=3)
        for s, a in ((0, 0.90), (1, 0.912), (2, 0.92), (5, 0.95))
    ]
    write_store(tmp_path, rows)
    line = the_line(compare(load_runs(tmp_path)))
    assert line["n"] == 3 and line["seeds"] == "0 1 2"  # seed 5 has no partner, seed 2 diverged but is kept
    assert line["mean"] == pytest.approx((0.02 + 0.022 + 0.82) / 3)
    assert "seeds 5 only in A" in line["notes"] and "B seed 2 diverged" in line["notes"]


def test_arms_must_differ_only_in_the_lesson_part(tmp_path):
    rows = [run_row(s, final_acc=0.8, strategy="l1_oneshot") for s in range(2)]
    rows += [
        run_row(s, final_acc=0.9, strategy="l1_iterative", schedule="iterative", rounds=3, epochs_budget=6)
        for s in range(2)
    ]
    rows += [
        run_row(s, final_acc=0.9, strategy="l1_other_base", schedule="iterative", rounds=3, baseline_epochs=9)
        for s in range(2)
    ]
    write_store(tmp_path / "unequal", rows)
    assert compare(load_runs(tmp_path / "unequal")).empty
    lines = summary_lines(compare(load_runs(tmp_path / "unequal")))
    assert "**L1: iterative > oneshot**: no comparable runs" in lines[1]


def test_criteria_lines_without_and_with_retraining_and_holm(tmp_path):
    rows = []
    for s in range(3):
        rows.append(run_row(s, criterion="l1", final_acc=0.90 + 0.01 * s, pruned_acc=0.70 + 0.001 * s))
        rows.append(
            run_row(
                s,
                criterion="random",
                strategy="random_oneshot",
                final_acc=0.88 + 0.012 * s,
                pruned_acc=0.60 + 0.002 * s,
            )
        )
        rows.append(
            run_row(
                s,
                criterion="largest_l1",
                strategy="largest_l1_oneshot",
                final_acc=0.95 - 0.001 * s,
                pruned_acc=0.5 + 0.003 * s,
            )
        )
    write_store(tmp_path, rows)
    table = compare(load_runs(tmp_path))
    assert len(table) == 4
    assert set(zip(table["claim"], table["metric"])) == {
        (c, m)
        for c in ("l1 > random", "l1 > largest_l1")
        for m in ("accuracy without retraining", "final accuracy (with retraining)")
    }
    assert list(table["p_holm"]) == pytest.approx(holm(list(table["p"])))
    ps = sorted(table["p"])  # Holm by hand: smallest x4, then x3 (monotone)
    assert min(table["p_holm"]) == pytest.approx(min(1, 4 * ps[0]))
    assert sorted(table["p_holm"])[1] == pytest.approx(max(min(1, 4 * ps[0]), min(1, 3 * ps[1])))
    for _, r in table.iterrows():
        expected = "inconclusive" if r["p_holm"] >= 0.05 else ("holds" if r["mean"] > 0 else "does not hold")
        assert r["verdict"] == expected
    final_largest = table[(table["claim"] == "l1 > largest_l1") & (table["metric"].str.startswith("final"))].iloc[0]
    assert final_largest["mean"] < 0 and final_largest["verdict"] == "does not hold"
    assert "4 comparisons" in rule_text(table) and "Holm" in rule_text(table)


def test_sensitivity_ratios_are_compared_at_equal_macs(tmp_path):
    rows = []
    for s in range(2):
        rows.append(
            run_row(
                s,
                strategy="l1_sensitivity",
                ratio="sensitivity",
                ratio_policy="target_macs",
                target_reduction=0.5,
                macs=0.50,
                final_acc=0.91 + 0.001 * s,
            )
        )
        rows.append(run_row(s, ratio="0.3", macs=0.70, final_acc=0.95))  # other MACs: not comparable
        rows.append(run_row(s, ratio="0.5", macs=0.51, final_acc=0.89 + 0.0012 * s))
    write_store(tmp_path, rows)
    line = the_line(compare(load_runs(tmp_path)), "sensitivity ratios > uniform")
    assert line["mean"] == pytest.approx(0.0199) and line["verdict"] == "holds"
    assert line["operating point"] == "MACs ratio A 0.500 vs B 0.510"


def test_verdict_report_writes_files(tmp_path):
    schedule_store(tmp_path, oneshot=[0.880, 0.890, 0.900], iterative=[0.900, 0.911, 0.922])
    _, lines = verdict_report(tmp_path, tmp_path / "out")
    text = (tmp_path / "out" / "verdicts.md").read_text()
    assert "**L1: iterative > oneshot**: holds" in text and "1 comparisons" in text
    assert any(s.startswith("**L5") and "no comparable runs" in s for s in lines)
    assert (tmp_path / "out" / "verdicts.tex").exists() and (tmp_path / "out" / "verdicts.csv").exists()
