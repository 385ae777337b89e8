import math

import pytest
from scipy import stats

from analysis.planning import plan
from analysis.stats import holm, t_quantile
from analysis.verdicts import compare, comparisons, pooled_sd, rule_text, summary_lines, verdict_report
from tests.analysis.helpers import resolved_config, run_row, write_store


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


def criterion_row(seed, criterion, acc, pruned=0.5, **dotted):
    """A row whose config is the real resolved config of the criteria arm (``dotted`` overrides)."""
    name = {"l1": "l1_oneshot", "random": "random_oneshot", "largest_l1": "largest_oneshot"}[criterion]
    config = resolved_config(seed, strategy__name=name, strategy__criterion=criterion, **dotted)
    return run_row(seed, final_acc=acc, pruned_acc=pruned, criterion=criterion, strategy=name, config=config)


# -- the four outcomes ---------------------------------------------------------------------


def test_better_when_every_seed_agrees(tmp_path):
    schedule_store(tmp_path, oneshot=[0.880, 0.890, 0.900], iterative=[0.900, 0.911, 0.922])
    line = the_line(compare(tmp_path))
    assert line["n"] == 3 and line["mean"] == pytest.approx(0.021) and line["std"] == pytest.approx(0.001)
    half = t_quantile(0.975, 2) * 0.001 / math.sqrt(3)  # one comparison: Holm's level is alpha itself
    assert line["alpha_ci"] == pytest.approx(0.05)
    assert (line["ci_low"], line["ci_high"]) == pytest.approx((0.021 - half, 0.021 + half))
    assert line["outcome"] == "better" and line["lesson"] == "L1" and line["family"] == 1
    assert line["annotation"] == "equal total retraining: 2 epochs" and line["refused because"] == ""


def test_worse_when_the_effect_flips(tmp_path):
    schedule_store(tmp_path, oneshot=[0.900, 0.911, 0.922], iterative=[0.880, 0.890, 0.900])
    line = the_line(compare(tmp_path))
    assert line["mean"] == pytest.approx(-0.021) and line["outcome"] == "worse"
    assert "1 worse" in summary_lines(compare(tmp_path))[1]


def test_tost_equivalent_when_tight_around_zero(tmp_path):
    # d = +0.0005, -0.0005, +0.0003, -0.0003 (pp/100): mean 0, sd 0.000476; margin 0.0025
    schedule_store(tmp_path, oneshot=[0.9] * 4, iterative=[0.9005, 0.8995, 0.9003, 0.8997])
    line = the_line(compare(tmp_path))
    d = [0.0005, -0.0005, 0.0003, -0.0003]
    mean, sd = sum(d) / 4, math.sqrt(sum(x * x for x in d) / 3)
    se = sd / 2
    p_lower = stats.t.sf((mean + 0.0025) / se, 3)
    p_upper = stats.t.cdf((mean - 0.0025) / se, 3)
    assert line["p_tost"] == pytest.approx(max(p_lower, p_upper), rel=1e-6)
    assert line["p_tost"] < 0.05 and line["outcome"] == "equivalent"
    # the equivalence interval is the 1 - 2 alpha one and lies inside the margin
    assert -0.0025 < line["eq_low"] < line["eq_high"] < 0.0025
    half = t_quantile(0.95, 3) * se
    assert (line["eq_low"], line["eq_high"]) == pytest.approx((mean - half, mean + half), abs=1e-9)


def test_inconclusive_when_wide_and_seeds_needed_come_from_power(tmp_path):
    schedule_store(tmp_path, oneshot=[0.90, 0.90, 0.90], iterative=[0.93, 0.88, 0.91])
    table = compare(tmp_path)
    line = the_line(table)
    assert line["ci_low"] < 0 < line["ci_high"] and line["outcome"] == "inconclusive"
    assert line["p_tost"] > 0.05  # too wide to call equivalent either
    sd, dof, m = pooled_sd(table)["L1"]
    assert (dof, m) == (2, 1) and sd == pytest.approx(line["std"])
    expected = plan(sd * 100, 0.25, 0.25, 0.05, 0.8, 1, dof).seeds
    assert line["seeds_needed"] == expected and expected > 100  # sd 2.5 pp (80% upper limit 5.3 pp) vs 0.25 pp


def test_one_seed_is_inconclusive(tmp_path):
    schedule_store(tmp_path, oneshot=[0.80], iterative=[0.90])
    line = the_line(compare(tmp_path))
    assert line["n"] == 1 and line["outcome"] == "inconclusive" and math.isnan(line["p"])


def test_zero_variance_uses_the_exact_sign_test_not_p_zero(tmp_path):
    # 0.91 - 0.90, 0.92 - 0.91, 0.93 - 0.92 differ only by float rounding (~1e-17): identical differences
    schedule_store(tmp_path, oneshot=[0.90, 0.91, 0.92], iterative=[0.91, 0.92, 0.93])
    line = the_line(compare(tmp_path))
    assert line["std"] == 0.0
    assert line["method"] == "sign (zero variance)" and line["p"] == pytest.approx(0.25)  # 2 / 2^3
    assert line["outcome"] == "inconclusive" and "zero variance" in line["notes"] and "n = 3" in line["notes"]
    assert math.isnan(line["ci_low"])  # no t-interval for a degenerate spread
    schedule_store(tmp_path / "six", oneshot=[0.90] * 6, iterative=[0.91] * 6)
    line = the_line(compare(tmp_path / "six"))
    assert line["p"] == pytest.approx(2 / 64) and line["outcome"] == "better"


# -- pairing: seeds, duplicates, failures, arm equality --------------------------------------


def test_pairs_by_seed_and_names_unpaired_and_diverged_seeds(tmp_path):
    rows = [run_row(s, final_acc=a, strategy="l1_oneshot") for s, a in ((0, 0.88), (1, 0.89), (2, 0.10))]
    rows += [
        run_row(s, final_acc=a, strategy="l1_iterative", schedule="iterative", rounds=3)
        for s, a in ((0, 0.90), (1, 0.912), (2, 0.92), (5, 0.95))
    ]
    write_store(tmp_path, rows)
    line = the_line(compare(tmp_path))
    assert line["n"] == 3 and line["seeds"] == "0 1 2"
    assert line["mean"] == pytest.approx((0.02 + 0.022 + 0.82) / 3)
    assert "seeds 5 only in A" in line["notes"] and "B seed 2 diverged" in line["notes"]


def test_duplicate_runs_of_a_seed_are_not_averaged(tmp_path):
    rows = [criterion_row(s, "l1", 0.9, pruned=0.60 + 0.01 * s) for s in range(3)]
    rows += [criterion_row(s, "random", 0.9, pruned=0.50 + 0.01 * s) for s in range(3)]
    # a rerun of random seed 1 with another thread count: the same arm, later, other numbers
    rerun = criterion_row(1, "random", 0.9, pruned=0.40, threads=2)
    rerun["time"] = "2026-12-02T10:00:00"
    write_store(tmp_path, rows + [rerun])
    line = the_line(compare(tmp_path), "l1 > other criteria, no retraining")
    assert line["n"] == 3
    assert line["mean"] == pytest.approx((0.1 + 0.21 + 0.1) / 3)  # seed 1 uses 0.40 only: d = 0.61 - 0.40
    assert f"B seed 1: 2 ok runs ({rows[4]['run_id']} and {rerun['run_id']}); the latest" in line["notes"]


def test_failed_seeds_are_listed(tmp_path):
    rows = [criterion_row(s, "l1", 0.9, pruned=0.6) for s in range(3)]
    rows += [criterion_row(s, "random", 0.9, pruned=0.5) for s in range(2)]
    failed = criterion_row(2, "random", 0.9)
    failed.update(status="failed", error={"type": "RuntimeError", "message": "loss is nan", "phase": "retrain"})
    write_store(tmp_path, rows + [failed])
    line = the_line(compare(tmp_path), "l1 > other criteria, no retraining")
    assert line["n"] == 2 and "seeds 2 only in A" in line["notes"]
    assert (
        f"B seed 2: failed run {failed['run_id']} (RuntimeError in retrain: loss is nan); no ok run: the seed is "
        "missing" in line["notes"]
    )


def test_an_lr_difference_outside_the_part_is_refused_with_the_key_named(tmp_path):
    rows = [criterion_row(s, "l1", 0.9, pruned=0.6 + 0.01 * s) for s in range(3)]
    rows += [
        criterion_row(s, "random", 0.9, pruned=0.5, strategy__retrain__optimizer__lr=0.05, threads=2) for s in range(3)
    ]
    write_store(tmp_path, rows)
    table = compare(tmp_path)
    line = the_line(table, "l1 > other criteria, no retraining")
    assert line["outcome"] == "refused" and math.isnan(line["mean"])
    assert line["refused because"] == "differs outside the lesson's part: strategy.retrain.optimizer.lr: 0.01 vs 0.05"
    assert line["differs in (part)"] == "strategy.criterion: l1 vs random"  # threads and strategy.name ignored
    (summary,) = [s for s in summary_lines(table) if "l1 > other criteria, no retraining" in s]
    assert "refused" in summary and "strategy.retrain.optimizer.lr" in summary


def test_equal_configs_are_compared_and_measurement_keys_annotated(tmp_path):
    rows = [criterion_row(s, "l1", 0.9, pruned=0.6 + 0.01 * s) for s in range(3)]
    rows += [criterion_row(s, "random", 0.9, pruned=0.5, measure__latency_repeats=10) for s in range(3)]
    write_store(tmp_path, rows)
    line = the_line(compare(tmp_path), "l1 > other criteria, no retraining")
    assert line["outcome"] == "better" and line["refused because"] == ""
    assert line["annotation"] == "measurement differs: measure.latency_repeats: 20 vs 10"
    assert (
        line["training"] == "A lr 0.01 (strategy.retrain.optimizer.lr), 2 epochs | B lr 0.01 "
        "(strategy.retrain.optimizer.lr), 2 epochs"
    )


def test_scratch_arms_may_differ_in_the_implied_optimizer_and_say_which_lr_they_used(tmp_path):
    rows = []
    for s in range(3):
        rows.append(run_row(s, final_acc=0.91 + 0.001 * s, config=resolved_config(s), retrain="finetune"))
        cfg = resolved_config(s, strategy__name="l1_scratch_e", strategy__retrain__mode="scratch_e")
        cfg["strategy"]["retrain"]["epochs"] = 4  # the finetune epochs a scratch arm ignores
        rows.append(
            run_row(s, final_acc=0.92, strategy="l1_scratch_e", retrain="scratch_e", epochs_budget=4, config=cfg)
        )
    write_store(tmp_path, rows)
    line = the_line(compare(tmp_path), "finetune > scratch_e")
    assert line["refused because"] == "" and line["outcome"] in ("worse", "inconclusive")
    assert line["differs in (part)"] == "strategy.retrain.mode: finetune vs scratch_e"
    assert line["implied"] == "strategy.retrain.epochs: 2 vs 4"
    assert "B lr 0.05 (baseline.optimizer.lr), 4 epochs" in line["training"]


def test_arms_with_another_budget_or_baseline_are_refused(tmp_path):
    rows = [run_row(s, final_acc=0.8, strategy="l1_oneshot") for s in range(2)]
    rows += [
        run_row(s, final_acc=0.9, strategy="l1_iterative", schedule="iterative", rounds=3, epochs_budget=6)
        for s in range(2)
    ]
    write_store(tmp_path, rows)
    line = the_line(compare(tmp_path))
    assert line["outcome"] == "refused"
    assert "retraining budget: A 6 epochs in total" in line["refused because"]
    rows = [run_row(s, final_acc=0.8, strategy="l1_oneshot") for s in range(2)]
    rows += [
        run_row(s, final_acc=0.9, strategy="it", schedule="iterative", rounds=3, baseline_epochs=9) for s in range(2)
    ]
    write_store(tmp_path / "base", rows)
    line = the_line(compare(tmp_path / "base"))
    assert line["refused because"] == "differs outside the lesson's part: parts.baseline_epochs: 9 vs 2"


# -- families ------------------------------------------------------------------------------


def criteria_rows():
    rows = []
    for s in range(3):
        rows.append(run_row(s, criterion="l1", final_acc=0.90 + 0.01 * s, pruned_acc=0.70 + 0.001 * s))
        rows.append(
            run_row(
                s, criterion="random", strategy="random_oneshot", final_acc=0.88 + 0.012 * s, pruned_acc=0.6 + 0.002 * s
            )
        )
        rows.append(
            run_row(
                s,
                criterion="largest_l1",
                strategy="largest_oneshot",
                final_acc=0.95 - 0.001 * s,
                pruned_acc=0.5 + 0.003 * s,
            )
        )
    return rows


def test_holm_stays_inside_each_lesson(tmp_path):
    write_store(tmp_path / "criteria", criteria_rows())
    alone = compare(tmp_path / "criteria")
    l3 = alone[alone["lesson"] == "L3"].sort_values("B")
    assert len(l3) == 2 and set(l3["family"]) == {2}
    assert list(l3["p_holm"]) == pytest.approx(holm(list(l3["p"])))
    # an unrelated lesson's runs (L1) in the same store change nothing in L3
    more = criteria_rows() + [
        run_row(s, final_acc=a, strategy="l1_iterative", schedule="iterative", rounds=3)
        for s, a in enumerate([0.95, 0.8, 0.9])
    ]
    write_store(tmp_path / "both", more)
    both = compare(tmp_path / "both")
    l3_both = both[both["lesson"] == "L3"].sort_values("B")
    assert list(l3_both["p_holm"]) == pytest.approx(list(l3["p_holm"]))
    assert list(l3_both["outcome"]) == list(l3["outcome"])
    assert (both["lesson"] == "L1").sum() == 1 and both.loc[both["lesson"] == "L1", "family"].iloc[0] == 1


def test_holm_intervals_match_the_decision(tmp_path):
    write_store(tmp_path, criteria_rows())
    table, secondary = comparisons(tmp_path)
    for _, r in table[table["method"] == "t"].iterrows():
        excludes_zero = r["ci_low"] > 0 or r["ci_high"] < 0
        assert excludes_zero == (r["p_holm"] < 0.05)
        assert any(r["alpha_ci"] == pytest.approx(x) for x in (0.025, 0.05))  # Holm's two steps in a family of two
    # the final accuracy of the criteria arms is reported apart (L3-ft is its own family; here a secondary too)
    sec = secondary[(secondary["lesson"] == "L3") & (secondary["endpoint"] == "final/acc")]
    assert len(sec) == 2 and "retrain/wall_s" in set(secondary["endpoint"])
    assert "tested in 2 lesson families" in rule_text(table)


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
    line = the_line(compare(tmp_path), "sensitivity ratios > uniform")
    assert line["mean"] == pytest.approx(0.0199) and line["outcome"] == "better"
    assert line["annotation"] == "MACs ratio A 0.500 vs B 0.510"


def test_verdict_report_writes_files(tmp_path):
    schedule_store(tmp_path, oneshot=[0.880, 0.890, 0.900], iterative=[0.900, 0.911, 0.922])
    _, lines = verdict_report(tmp_path, tmp_path / "out")
    text = (tmp_path / "out" / "verdicts.md").read_text()
    assert "**L1: iterative > oneshot**" in text and "1 better" in text and "1 comparisons" in text
    assert any(s.startswith("**L5") and "no comparable runs" in s for s in lines)
    for name in ("verdicts.tex", "verdicts.csv", "verdicts_secondary.csv", "verdicts_secondary.md"):
        assert (tmp_path / "out" / name).exists()


def test_schedules_pair_in_both_budget_regimes(tmp_path):
    def arm(seed, name, acc, epochs, schedule="oneshot", rounds=1, budget="total", total=None):
        cfg = resolved_config(seed, strategy__schedule=schedule, strategy__rounds=rounds)
        cfg["strategy"]["retrain"].update(epochs=epochs, budget=budget)
        steps = float(total if total is not None else epochs)
        return run_row(
            seed,
            final_acc=acc,
            strategy=name.split("-")[0],
            schedule=schedule,
            rounds=rounds,
            epochs_budget=int(steps),
            config=cfg,
            metrics={"retrain/epochs": steps},
        ) | {"arm": name}

    rows = []
    for s in range(3):
        rows.append(arm(s, "l1_oneshot", 0.90 + 0.001 * s, 2))
        rows.append(arm(s, "l1_oneshot-e3x", 0.91 + 0.001 * s, 6))
        rows.append(arm(s, "l1_iterative", 0.89 + 0.002 * s, 2, "iterative", 3))
        rows.append(arm(s, "l1_iterative-per_step", 0.92 + 0.0015 * s, 2, "iterative", 3, "per_step", total=6))
    write_store(tmp_path, rows)
    table = compare(tmp_path)
    pairs = {(r["A"], r["B"]): r for _, r in table.iterrows()}
    assert set(pairs) == {
        ("l1_iterative", "l1_oneshot"),  # equal total (2 epochs)
        ("l1_iterative-per_step", "l1_oneshot"),  # equal epochs per step (2), totals 6 vs 2
        ("l1_iterative-per_step", "l1_oneshot-e3x"),  # equal total (6)
    }
    assert pairs[("l1_iterative", "l1_oneshot")]["annotation"] == "equal total retraining: 2 epochs"
    per_step = pairs[("l1_iterative-per_step", "l1_oneshot")]
    assert per_step["annotation"] == "equal retraining per step: 2 epochs a step (total A 6 vs B 2)"
    assert per_step["implied"] == "strategy.retrain.budget: per_step vs total"
    matched = pairs[("l1_iterative-per_step", "l1_oneshot-e3x")]
    assert matched["annotation"] == "equal total retraining: 6 epochs"
    assert matched["implied"] == "strategy.retrain.budget: per_step vs total; strategy.retrain.epochs: 2 vs 6"
    assert set(table["family"]) == {3} and set(table["refused because"]) == {""}


def test_freeze_modes_and_skipping_are_compared_at_their_own_operating_points(tmp_path):
    scan = {"_target_": "experiments.strategies.parts.Scan", "ratios": [0.25, 0.5, 0.75], "criteria": []}
    rows = []
    for s in range(3):
        rows.append(run_row(s, final_acc=0.91, macs=0.255, config=resolved_config(s)))
        rows.append(run_row(s, ratio="0.3", macs=0.50, config=resolved_config(s, strategy__ratio=0.3)))
        for bn in ("fixed", "update"):
            cfg = resolved_config(
                s, strategy__freeze={"most_sensitive": 2}, strategy__freeze_bn=bn, strategy__scan=scan
            )
            rows.append(
                run_row(
                    s,
                    final_acc=0.905,
                    macs=0.255,
                    strategy="l1_freeze_sensitive",
                    freeze="most_sensitive:2",
                    freeze_bn=bn,
                    config=cfg,
                )
                | {"arm": f"l1_freeze_sensitive-{bn}"}
            )
        cfg = resolved_config(s, strategy__skip_sensitive=2, strategy__scan=scan)
        rows.append(
            run_row(
                s, final_acc=0.912 + 0.001 * s, macs=0.24, strategy="l1_skip_sensitive", skip_sensitive=2, config=cfg
            )
        )
    write_store(tmp_path, rows)
    table = compare(tmp_path)
    l5 = table[table["lesson"] == "L5"].sort_values("A")
    assert list(l5["A"]) == ["l1_freeze_sensitive-fixed", "l1_freeze_sensitive-update"]
    assert set(l5["B"]) == {"l1_oneshot"} and set(l5["refused because"]) == {""}
    assert (
        l5.iloc[1]["differs in (part)"]
        == 'strategy.freeze: {"most_sensitive": 2} vs null; strategy.freeze_bn: update vs fixed'
    )
    skip = table[table["lesson"] == "L5-skip"]
    # the skip arm keeps 0.240 of the MACs: paired with uniform 0.5 (0.255), never with uniform 0.3 (0.50)
    assert len(skip) == 1 and skip.iloc[0]["annotation"] == "MACs ratio A 0.240 vs B 0.255"
    assert skip.iloc[0]["implied"].startswith("strategy.scan")


def test_sensitivity_arms_targeting_params_are_matched_on_params(tmp_path):
    rows = []
    for s in range(2):
        rows.append(
            run_row(
                s,
                strategy="l1_sensitivity_params",
                ratio="sensitivity",
                ratio_policy="target_params",
                target_resource="params",
                macs=0.40,
                params=0.26,
                final_acc=0.90 + 0.001 * s,
            )
        )
        rows.append(run_row(s, ratio="0.5", macs=0.255, params=0.25, final_acc=0.89 + 0.002 * s))
        rows.append(run_row(s, ratio="0.3", macs=0.49, params=0.49, final_acc=0.92))
    write_store(tmp_path, rows)
    line = the_line(compare(tmp_path), "sensitivity ratios > uniform")
    assert line["B"] == "l1_oneshot" and line["operating point"] == "target_params"
    assert line["annotation"] == "params ratio A 0.260 vs B 0.250" and line["mean"] == pytest.approx(0.0095)


# -- sparsity training (study=methods) ------------------------------------------------------


def methods_row(seed, method, acc, **dotted):
    """A slimming-like arm: sparsity-trains 1 epoch and fine-tunes 1 (2 in all, like l1_oneshot's 2)."""
    config = resolved_config(
        seed,
        strategy__name=method,
        strategy___target_="experiments.strategies.sparsity.SparsityPruning",
        strategy__criterion="bn_gamma",
        strategy__scope="group",
        strategy__sparsity={"l1": 0.03, "epochs": 1},
        strategy__retrain__epochs=1,
        **dotted,
    )
    return run_row(
        seed,
        final_acc=acc,
        strategy=method,
        criterion="bn_gamma",
        sparsity="bn_l1",
        sparsity_epochs=1,
        scope="group",
        config=config,
        metrics={"retrain/epochs": 2.0},
    )


def test_methods_pair_at_equal_total_epochs_and_refuse_another_lr(tmp_path):
    oneshot = [run_row(s, final_acc=0.90, config=resolved_config(s), metrics={"retrain/epochs": 2.0}) for s in range(3)]
    write_store(tmp_path, oneshot + [methods_row(s, "slimming", a) for s, a in enumerate([0.91, 0.912, 0.913])])
    line = the_line(compare(tmp_path), "sparsity training > l1 one-shot")
    assert line["lesson"] == "L6" and line["refused because"] == "" and line["n"] == 3
    assert line["annotation"] == "equal total retraining: 2 epochs"
    assert line["mean"] == pytest.approx(0.011667, abs=1e-6)

    write_store(
        tmp_path,
        oneshot + [methods_row(s, "slimming", 0.91, strategy__retrain__optimizer__lr=0.05) for s in range(3)],
    )
    line = the_line(compare(tmp_path), "sparsity training > l1 one-shot")
    assert "strategy.retrain.optimizer.lr" in line["refused because"] and line["outcome"] != "better"


def test_a_global_arm_is_compared_with_the_uniform_arm_it_matches_on_macs(tmp_path):
    rows = [
        run_row(s, final_acc=0.90 + 0.001 * s, macs=0.5, config=resolved_config(s, strategy__scope="group"))
        for s in range(3)
    ]
    rows += [
        run_row(
            s,
            final_acc=0.91 + 0.002 * s,
            macs=0.49,
            strategy="l1_global",
            scope="global",
            config=resolved_config(s, strategy__name="l1_global", strategy__scope="global", strategy__match="macs"),
        )
        for s in range(3)
    ]
    write_store(tmp_path, rows)
    line = the_line(compare(tmp_path), "global ranking > uniform")
    assert line["lesson"] == "L2-global" and line["n"] == 3 and line["refused because"] == ""
    assert line["mean"] == pytest.approx(0.011) and line["outcome"] == "better"
