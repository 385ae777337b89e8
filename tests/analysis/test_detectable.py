"""Minimal detectable effects, honest pilot degrees of freedom, lessons at chance, rising baselines,
and the retraining-recipe comparisons of L4."""

import math

import pandas as pd
import pytest
from scipy import stats

from analysis.convergence import baseline_rise
from analysis.lessons import LESSONS
from analysis.planning import minimal_detectable_effect, power_difference
from analysis.power import main, power_table
from analysis.verdicts import compare, honest_dof
from tests.analysis.helpers import resolved_config, run_row, write_store


def test_the_minimal_detectable_effect_by_hand_with_the_noncentral_t():
    mde = minimal_detectable_effect(12, 0.3)
    # by hand: 11 df, critical t_{0.975, 11} = 2.2010; the noncentral t with noncentrality d / (0.3 / sqrt 12)
    # exceeds it in either tail with probability 0.8 exactly at d = mde
    crit, ncp = stats.t.isf(0.025, 11), mde / (0.3 / math.sqrt(12))
    assert crit == pytest.approx(2.20099, abs=1e-5)
    assert stats.nct.sf(crit, 11, ncp) + stats.nct.cdf(-crit, 11, ncp) == pytest.approx(0.8, abs=1e-9)
    assert mde == pytest.approx(0.2666, abs=1e-4)
    # the textbook approximation (t_{1-a/2, n-1} + t_{power, n-1}) * SE lands within 0.001 pp of it
    assert (crit + stats.t.ppf(0.8, 11)) * 0.3 / math.sqrt(12) == pytest.approx(mde, abs=1e-3)
    assert power_difference(12, 0.25, 0.3) < 0.8 <= power_difference(12, mde + 1e-9, 0.3)  # 0.25 pp: not detectable
    assert minimal_detectable_effect(12, 0.3, 0.05 / 3) > mde  # a family of 3 is tested at alpha / 3
    assert minimal_detectable_effect(1, 0.3) == math.inf and minimal_detectable_effect(5, 0.0) == 0.0


def test_the_power_command_prints_the_minimal_detectable_effect(capsys):
    assert main(["--sd", "0.3", "--effect", "0.25", "--seeds", "12"]) == 0
    out = capsys.readouterr().out
    assert "minimal detectable effect at 12 seeds: 0.267 pp" in out and "0.25 pp is not detectable" in out
    table = power_table(0.25, 0.3, seeds=12)
    assert set(table["mde at 12 seeds (pp)"]) == {0.2666}
    with pytest.raises(SystemExit):
        main(["--sd", "0.3", "--seeds", "1"])


def test_comparisons_sharing_an_arm_add_no_degrees_of_freedom():
    shared = pd.DataFrame(
        {"A": ["l1", "l1"], "B": ["random", "largest"], "n": [5, 5], "seeds": ["0 1 2 3 4", "0 1 2 3 4"]}
    )
    assert honest_dof(shared) == 4  # one set of 5 seeds, not 2 x 4
    apart = pd.DataFrame({"A": ["x", "y"], "B": ["u", "v"], "n": [5, 3], "seeds": ["0 1 2 3 4", "0 1 2"]})
    assert honest_dof(apart) == 4 + 2  # independent arms: their seeds add
    chained = pd.DataFrame({"A": ["a", "c"], "B": ["b", "b"], "n": [3, 4], "seeds": ["0 1 2", "0 1 2 3"]})
    assert honest_dof(chained) == 3


def l3_rows(n, l1, random):
    rows = []
    for s in range(n):
        rows.append(run_row(s, strategy="l1_oneshot", pruned_acc=l1 + 0.002 * (s % 2), retrain="none"))
        rows.append(
            run_row(s, strategy="random_oneshot", criterion="random", pruned_acc=random + 0.001 * s, retrain="none")
        )
    return rows


def test_a_lesson_at_chance_is_not_measurable_and_left_out_of_the_sweep(tmp_path, capsys):
    # L3 without retraining: 12.1% vs ~11% on a 10-class dataset (chance 10%), closer than its 5-point effect
    rows = l3_rows(5, 0.121, 0.11)
    rows += [run_row(s, strategy="l1_oneshot-x", final_acc=0.90 + 0.001 * s) for s in range(5)]
    rows += [
        run_row(s, strategy="l1_iterative", schedule="iterative", rounds=3, final_acc=0.901 + 0.002 * (s % 3))
        for s in range(5)
    ]
    write_store(tmp_path, rows)
    table = power_table(store=tmp_path, seeds=12).set_index("lesson")
    assert table.loc["L3", "measurable"].startswith("not measurable at this endpoint (pruned/acc)")
    assert "chance (10%)" in table.loc["L3", "measurable"] and table.loc["L3", "seeds needed"] == "not measurable"
    assert table.loc["L1", "measurable"] == "yes" and isinstance(table.loc["L1", "seeds needed"], int)
    assert not math.isnan(table.loc["L1", "mde at 12 seeds (pp)"])
    assert main(["--store", str(tmp_path), "--max"]) == 0
    assert capsys.readouterr().out.strip() == str(table.loc["L1", "seeds needed"])  # L3 does not set the count
    above = tmp_path / "above"
    write_store(above, l3_rows(5, 0.60, 0.40))  # far above chance: measurable
    assert power_table(store=above).set_index("lesson").loc["L3", "measurable"] == "yes"


def test_a_pilot_of_fewer_than_five_seeds_plans_nothing(tmp_path):
    rows = [run_row(s, final_acc=0.90 + 0.001 * s) for s in range(3)]
    rows += [run_row(s, strategy="l1_iterative", schedule="iterative", final_acc=0.905 + 0.002 * s) for s in range(3)]
    write_store(tmp_path, rows)
    l1 = power_table(0.25, store=tmp_path).set_index("lesson").loc["L1"]
    assert l1["sd source"].startswith("pilot too small: 2 df") and l1["seeds needed"] == "pilot too small"


def test_every_lesson_declares_its_smallest_effect():
    effects = {lesson.code: lesson.effect for lesson in LESSONS}
    assert effects["L3"] == pytest.approx(0.05) and effects["L3-ft"] == pytest.approx(0.0025)
    assert all(e > 0 for e in effects.values())


def with_curve(row, curve, window=3):
    row["baseline_training"] = {"val_acc": curve, "rule": {"plateau_window": window}}
    return row


def test_a_comparison_on_a_still_rising_baseline_is_flagged(tmp_path):
    assert baseline_rise({"baseline_training": {"val_acc": [0.9, 0.92, 0.925, 0.93, 0.935]}}) == (
        pytest.approx(0.015),
        3,
    )
    assert baseline_rise({"baseline_training": {"val_acc": [0.9, 0.905]}})[1] == 1  # a short curve: its last epoch
    assert baseline_rise({}) is None
    rising, flat = [0.90, 0.92, 0.925, 0.93], [0.93, 0.931, 0.931, 0.931]
    rows = []
    for s in range(3):
        curve = rising if s == 1 else flat
        rows.append(with_curve(run_row(s, final_acc=0.90 + 0.001 * s), curve))
        rows.append(with_curve(run_row(s, strategy="l1_iterative", schedule="iterative", final_acc=0.905), curve))
    write_store(tmp_path, rows)
    notes = compare(tmp_path).set_index("lesson").loc["L1", "notes"]
    assert "baseline still rising: the baselines of 1 seed(s) gained more than the ±0.25 pp margin" in notes
    assert "+3.00 pp over 3 epoch(s), seed 1" in notes


def recipe_row(seed, acc, **dotted):
    config = resolved_config(seed, **dotted)
    return run_row(seed, final_acc=acc, strategy="l1_oneshot", config=config)


def test_retraining_recipes_are_compared_with_plain_fine_tuning(tmp_path):
    rows = []
    for s in range(3):
        rows.append(recipe_row(s, 0.90 + 0.001 * s))
        rows.append(recipe_row(s, 0.905 + 0.001 * s, strategy__retrain__lr_schedule="rewind"))
        rows.append(recipe_row(s, 0.903 + 0.002 * s, strategy__retrain__distill=0.5))
        rows.append(recipe_row(s, 0.899 + 0.001 * s, strategy__retrain__optimizer__lr=0.05))
    write_store(tmp_path, rows)
    table = compare(tmp_path)
    recipes = table[table["lesson"] == "L4-recipe"].set_index("claim")
    assert set(recipes.index) == {
        "lr rewinding > finetune",
        "distillation > finetune",
        "finetune at the baseline's lr > finetune",
    }
    assert (recipes["refused because"].fillna("") == "").all() and (recipes["family"] == 3).all()
    assert recipes.loc["lr rewinding > finetune", "mean"] == pytest.approx(0.005)
    assert recipes.loc["lr rewinding > finetune", "differs in (part)"].startswith("strategy.retrain.lr_schedule")


def _schedule_rows(seed, epochs, base_acc, curve, final_acc, strategy="l1_oneshot", **parts):
    config = {"seed": seed, "machine": "testbox", "baseline": {"epochs": epochs, "lr_schedule": "cosine"}}
    row = run_row(seed, base_acc=base_acc, final_acc=final_acc, strategy=strategy, config=config,
                  baseline_epochs=epochs, **parts)  # fmt: skip
    return with_curve(row, curve)


@pytest.mark.parametrize(
    ("gain", "says"), [(0.0005, "baseline at its plateau"), (0.006, "baseline not at its plateau")]
)
def test_a_longer_schedule_on_the_same_seeds_decides_whether_the_rise_was_annealing(tmp_path, gain, says):
    """Cosine's last epochs rise (+0.5 pp here); the same seeds on a 16-epoch schedule say whether more
    training moves test accuracy: by 0.05 pp (at its plateau) or by 0.6 pp (not)."""
    annealing = [0.90, 0.92, 0.925, 0.928, 0.930, 0.931, 0.933, 0.935]  # +0.5 pp over the last 3 epochs
    rows = []
    for s in range(4):
        base = 0.930 + 0.001 * s
        rows.append(_schedule_rows(s, 8, base, annealing, 0.90 + 0.001 * s))
        rows.append(_schedule_rows(s, 8, base, annealing, 0.905, "l1_iterative", schedule="iterative"))
        longer = base + gain + (0.0004 if s % 2 else -0.0004)
        rows.append(_schedule_rows(s, 16, longer, annealing + [0.935] * 8, 0.90))  # the check: a 16-epoch baseline
    write_store(tmp_path, rows)
    table = compare(tmp_path)
    notes = table[(table["lesson"] == "L1")]["notes"].iloc[0]
    assert says in notes and "cosine 16 ep gained" in notes and "on 4 seeds" in notes
    assert ("may win for that reason alone" in notes) == (says == "baseline not at its plateau")
