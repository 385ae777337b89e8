import math

import pytest

from analysis.lessons import LESSONS
from analysis.planning import (
    normal_approximation,
    plan,
    power_difference,
    power_equivalence,
    sd_upper,
    seeds_for_difference,
)
from analysis.power import CONF, main, power_table, study_arms
from tests.analysis.helpers import run_row, write_store


def test_power_is_alpha_at_no_effect_and_grows_with_the_seeds():
    # no true difference: the two-sided test rejects with probability alpha, whatever n and sd
    for n in (2, 3, 10, 200):
        assert power_difference(n, 0.0, 0.3) == pytest.approx(0.05, abs=1e-12)
        assert power_difference(n, 0.0, 0.3, 0.01) == pytest.approx(0.01, abs=1e-12)
    # finite and nondecreasing over the range the seed search visits (statsmodels' TTestPower,
    # 1 - nctdtr, is NaN at 50 seeds here: effect / sd = 1.25, noncentrality 8.8)
    powers = [power_difference(n, 0.25, 0.2) for n in range(2, 400)]
    assert all(0.0 <= a <= b <= 1.0 for a, b in zip(powers, powers[1:]))
    assert power_difference(50, 0.25, 0.2) == pytest.approx(1.0, abs=1e-9)
    tost_powers = [power_equivalence(n, 0.25, 0.2, 0.0125) for n in range(2, 400)]
    assert all(0.0 <= a <= b <= 1.0 for a, b in zip(tost_powers, tost_powers[1:]))


def test_seeds_for_a_paired_difference_by_hand():
    # effect = sd: Guenther's corrected normal approximation by hand,
    # (z_.975 + z_.8)^2 + z_.975^2 / 2 = (1.959964 + 0.841621)^2 + 1.959964^2 / 2 = 9.770 -> 10
    assert normal_approximation(1.0, 1.0) == 10
    # and the exact noncentral-t answer agrees (R: power.t.test(delta=1, sd=1, type="paired") -> n = 9.94)
    assert seeds_for_difference(1.0, 1.0) == 10
    assert power_difference(10, 1.0, 1.0) == pytest.approx(0.80310, abs=1e-4)
    assert power_difference(9, 1.0, 1.0) < 0.8
    # sd 0.2 pp, effect 0.25 pp: (2.8016^2) * 0.64 + 1.92 = 6.94 -> 7 (normal); exact: 8
    assert normal_approximation(0.25, 0.2) == 7 and seeds_for_difference(0.25, 0.2) == 8


def test_a_pilot_sd_is_planned_at_its_upper_limit():
    # chi2(2) is exponential: its 20% quantile is -2 log 0.8
    assert sd_upper(1.0, 2) == pytest.approx(math.sqrt(2 / (-2 * math.log(0.8))), rel=1e-9)  # 2.117
    declared, pilot = plan(0.2, 0.25), plan(0.2, 0.25, dof=2)
    assert declared.seeds == max(declared.difference, declared.equivalence) and declared.difference == 8
    assert pilot.sd_planned == pytest.approx(0.2 * 2.1169, rel=1e-4) and pilot.seeds > 3 * declared.seeds
    # a family of 3 comparisons is planned at alpha / 3
    assert plan(0.2, 0.25, comparisons=3).alpha == pytest.approx(0.05 / 3)
    assert power_equivalence(plan(0.2, 0.25).equivalence, 0.25, 0.2) >= 0.8


def test_power_cli_declared_and_from_a_pilot_store(tmp_path, capsys):
    assert main(["--sd", "0.2", "--effect", "0.25"]) == 0
    out = capsys.readouterr().out
    assert all(lesson.code in out for lesson in LESSONS) and "declared" in out
    assert len(power_table(0.25, 0.2)) == len({lesson.code for lesson in LESSONS})  # one row per family
    assert main(["--sd", "0.2", "--effect", "0.25", "--max"]) == 0
    assert capsys.readouterr().out.strip() == str(plan(0.2, 0.25).seeds)
    rows = [run_row(s, final_acc=0.90 + 0.001 * s, strategy="l1_oneshot") for s in range(5)]
    rows += [
        run_row(s, final_acc=a, strategy="l1_iterative", schedule="iterative", rounds=3)
        for s, a in enumerate([0.905, 0.907, 0.915, 0.904, 0.912])
    ]
    write_store(tmp_path, rows)
    table = power_table(0.25, store=tmp_path)
    l1 = table[table["lesson"] == "L1"].iloc[0]
    # d = 0.5, 0.6, 1.3, 0.1, 0.8 pp -> sd 0.4393 pp with 4 dof (5 seeds: the smallest pilot that plans)
    assert l1["sd (pp)"] == pytest.approx(0.4393, abs=1e-4) and l1["sd dof"] == 4
    assert l1["seeds needed"] == plan(l1["sd (pp)"], 0.25, 0.25, dof=4).seeds
    three = tmp_path / "three"  # the first 3 seeds only: 2 dof, too few to plan from
    write_store(three, [r for r in rows if r["seed"] < 3])
    assert power_table(0.25, store=three).set_index("lesson").loc["L1", "seeds needed"] == "pilot too small"
    assert table[table["lesson"] == "L4"].iloc[0]["sd source"] == "no pilot runs in the store"
    # planning for a sweep of some arms only: lessons no pair of them compares get no pilot SD
    only = power_table(0.25, store=tmp_path, arms=["l1_oneshot", "random_oneshot"])
    assert only[only["lesson"] == "L1"].iloc[0]["sd source"] == "no pilot runs in the store"
    assert main(["--store", str(tmp_path), "--arms", "l1_oneshot", "--max"]) == 1


def test_a_study_plans_from_the_arms_it_sweeps(capsys):
    arms = study_arms("all")
    assert "l1_oneshot" in arms and "l1_scratch_b-uncapped" in arms and len(arms) == len(set(arms))
    assert all((CONF / "arm" / f"{a}.yaml").is_file() for a in arms)
    with pytest.raises(SystemExit):
        main(["--store", "results", "--study", "nope"])
    err = capsys.readouterr().err
    assert "--study nope" in err and "allowed values: all," in err


def test_a_plan_beyond_the_search_limit_says_so(tmp_path, capsys):
    rows = [run_row(s, final_acc=0.90, strategy="l1_oneshot") for s in range(5)]
    rows += [
        run_row(s, final_acc=a, strategy="l1_iterative", schedule="iterative", rounds=3)
        for s, a in enumerate([0.80, 0.90, 1.0, 0.80, 1.0])
    ]  # d = -10, 0, +10, -10, +10 pp: sd 10 pp with 4 dof, 15 pp at its upper limit, vs an effect of 0.25 pp
    write_store(tmp_path, rows)
    table = power_table(store=tmp_path)
    assert table[table["lesson"] == "L1"].iloc[0]["seeds needed"] == "> 10000"
    assert main(["--store", str(tmp_path), "--max"]) == 0 and capsys.readouterr().out.strip() == "10000"


def test_zero_sd_plans_for_the_exact_sign_test():
    # the verdicts use the sign test when every difference is identical: 2 / 2^n < 0.05 / 4 needs n = 8,
    # and equivalence 1 / 2^n < 0.0125 needs n = 7 (never "2 seeds" from a t-test with sd 0)
    p = plan(0.0, 0.25, comparisons=4)
    assert (p.difference, p.equivalence, p.seeds) == (8, 7, 8)
    assert plan(0.0, 0.25).seeds == 6  # 2 / 2^6 = 0.031 < 0.05 <= 2 / 2^5
