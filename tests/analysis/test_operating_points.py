"""Verdicts at every operating point: L1 and L2 at ratios 0.3/0.5/0.7, L2 paired on MACs, params and measured latency,
L3 per group from the per-criterion scans (Li Fig. 2c) and with largest_oneshot, L5-skip at uniform's MACs."""

import pytest

from analysis.lessons import LATENCY_TOLERANCE, declaration_table
from analysis.verdicts import compare
from tests.analysis import study_rows as study_rows_module
from tests.analysis.helpers import resolved_config, run_row, write_store
from tests.analysis.operating_rows import SCAN, arm_row, config, operating_rows
from tests.analysis.study_rows import study_rows

LATENCY_CLAIM = "sensitivity ratios > uniform, at matched latency (batch 64)"


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return compare(write_store(tmp_path_factory.mktemp("points"), operating_rows()))


def pairs(rows):
    return {(r["A"], r["B"]): r for _, r in rows.iterrows()}


def test_l1_gives_a_verdict_at_every_operating_point(table):
    l1 = table[table["lesson"] == "L1"]
    found = pairs(l1)
    for sfx, point in (("-r03", "ratio 0.3"), ("", "ratio 0.5"), ("-r07", "ratio 0.7")):
        expected = {
            (f"l1_layerwise{sfx}", f"l1_oneshot{sfx}"),  # equal total (2 epochs)
            (f"l1_layerwise-per_step{sfx}", f"l1_oneshot{sfx}"),  # equal epochs a step (Li's)
            (f"l1_layerwise-per_step{sfx}", f"l1_oneshot-e6x{sfx}"),  # equal total (12)
            (f"l1_iterative-per_step{sfx}", f"l1_oneshot{sfx}"),
            (f"l1_iterative-per_step{sfx}", f"l1_oneshot-e3x{sfx}"),
        }
        assert expected <= set(found)
        assert {found[p]["operating point"] for p in expected} == {point}
        assert found[(f"l1_layerwise-per_step{sfx}", f"l1_oneshot{sfx}")]["outcome"] == "better"
    assert len(l1) == 15 and set(l1["family"]) == {15}  # Holm over every L1 comparison at every ratio
    assert set(l1["refused because"]) == {""} and l1["p_holm"].notna().all()


def test_l2_is_paired_on_macs_and_on_params_at_every_operating_point(table):
    l2 = table[(table["lesson"] == "L2") & (table["claim"] == "sensitivity ratios > uniform")]
    found = pairs(l2)
    for sfx, ratio in (("-r03", "0.3"), ("", "0.5"), ("-r07", "0.7")):
        macs, params = (
            found[(f"l1_sensitivity_macs{sfx}", f"l1_oneshot{sfx}")],
            found[(f"l1_sensitivity_params{sfx}", f"l1_oneshot{sfx}")],
        )
        assert macs["annotation"].startswith("MACs ratio") and params["annotation"].startswith("params ratio")
        assert macs["operating point"] == f"removes what uniform {ratio} removes, target_macs"
        assert macs["outcome"] == params["outcome"] == "better"
    glob = table[(table["lesson"] == "L2-global") & (table["claim"] == "global ranking > uniform")]
    assert set(pairs(glob)) == {(f"l1_global_macs{s}", f"l1_oneshot{s}") for s in ("-r03", "", "-r07")}


def test_l2_latency_pairing_refuses_arms_whose_latency_differs_and_shows_every_resource(table):
    latency = table[table["claim"] == LATENCY_CLAIM]
    assert set(latency["lesson"]) == {"L2"} and len(latency) == 6  # one row per sensitivity arm
    row = pairs(latency)[("l1_sensitivity_macs", "l1_oneshot")]  # MAC-matched, but 1.17x uniform's latency
    assert row["outcome"] == "refused"
    assert "measured latency ratio at batch 64 A 0.516 vs B 0.441" in row["refused because"]
    assert (
        "MACs ratio A 0.245 vs B 0.255" in row["annotation"] and "params ratio A 0.483 vs B 0.254" in row["annotation"]
    )
    glob = pairs(table[table["claim"] == "global ranking > uniform, at matched latency (batch 64)"])
    assert glob[("l1_global_macs", "l1_oneshot")]["refused because"] == ""  # within the tolerance: tested
    assert glob[("l1_global_macs", "l1_oneshot")]["annotation"].startswith("latency ratio at batch 64 A 0.437")
    # the L2 family holds every tested L2 comparison, however paired
    assert set(table.loc[table["lesson"] == "L2", "family"]) == {6}


def test_a_uniform_arm_of_about_the_same_latency_is_the_latency_pair(tmp_path):
    rows = operating_rows()
    for s in range(4):  # uniform 0.4: the latency of l1_sensitivity_macs (0.516), far more MACs removed than 0.3
        rows.append(arm_row(s, "l1_oneshot-r04", 0.89, config(s, strategy__ratio=0.4), (0.36, 0.36, 0.53), ratio="0.4"))
    rows = [r for r in rows if not (r["arm"] == "l1_global_macs-r07")] + [
        r | {"metrics": {k: v for k, v in r["metrics"].items() if k != "ratio/latency_b64"}}
        for r in rows
        if r["arm"] == "l1_global_macs-r07"
    ]
    table = compare(write_store(tmp_path, rows))
    latency = pairs(table[table["claim"] == LATENCY_CLAIM])
    row = latency[("l1_sensitivity_macs", "l1_oneshot-r04")]
    assert row["refused because"] == "" and row["outcome"] == "better" and row["n"] == 4
    assert abs(0.516 - 0.531) <= LATENCY_TOLERANCE and "MACs ratio A 0.245 vs B 0.360" in row["annotation"]
    assert set(table.loc[table["lesson"] == "L2", "family"]) == {7}  # one more tested L2 comparison
    unmeasured = pairs(table[table["claim"] == "global ranking > uniform, at matched latency (batch 64)"])
    assert "no latency measured at batch 64 (ratio/latency_b64) in A" in next(
        r["refused because"] for (a, _), r in unmeasured.items() if a == "l1_global_macs-r07"
    )


def test_l3_layer_tests_li_fig_2c_per_group_and_ratio_with_holm_over_the_lesson(table):
    l3 = table[table["lesson"] == "L3-layer"]
    assert len(l3) == 12 and set(l3["family"]) == {12}  # 2 groups x 3 ratios x 2 criteria
    assert set(l3["A"]) == {"criteria_scan scan: l1"}
    assert set(l3["B"]) == {"criteria_scan scan: random", "criteria_scan scan: largest_l1"}
    assert set(l3["operating point"]) == {
        f"{g}, ratio {r}" for g in ("features.0", "features.3") for r in (0.3, 0.5, 0.7)
    }
    assert set(l3["outcome"]) == {"better"} and set(l3["endpoint"]) == {"scan/acc"} and set(l3["n"]) == {4}
    largest = l3[l3["B"].str.endswith("largest_l1")].set_index("operating point")["mean"]
    assert largest["features.0, ratio 0.7"] == pytest.approx((1.2 - 0.1) * 0.49, abs=0.005)  # collapses
    assert largest["features.0, ratio 0.7"] > largest["features.0, ratio 0.3"]
    assert l3.iloc[0]["annotation"].startswith("features.0 pruned alone on the baseline, keeps 11 of 16 channels")


def test_l3_layer_says_when_both_criteria_are_at_chance(tmp_path):
    rows = operating_rows(3)
    for r in rows:
        for e in r["tables"].get("sensitivity_criteria", []):
            if e["group"] == "features.3" and e["ratio"] == 0.7:
                e["metric"] = 0.1  # both at Fashion-MNIST's chance
    l3 = compare(write_store(tmp_path, rows))
    row = l3[(l3["lesson"] == "L3-layer") & (l3["operating point"] == "features.3, ratio 0.7")].iloc[0]
    assert "both criteria at chance (0.10): not measurable" in row["notes"] and row["outcome"] != "better"


def test_l3_compares_l1_oneshot_with_random_and_largest_oneshot_of_study_all(tmp_path, monkeypatch):
    monkeypatch.setitem(
        study_rows_module.ARMS, "largest_oneshot", {"final": 0.905, "pruned": 0.10, "criterion": "largest_l1"}
    )
    rows = study_rows(4)
    table = compare(write_store(tmp_path, rows))
    l3 = pairs(table[(table["lesson"] == "L3") & (table["refused because"] == "")])
    assert set(l3) == {("l1_oneshot", "random_oneshot"), ("l1_oneshot", "largest_oneshot")}
    assert l3[("l1_oneshot", "largest_oneshot")]["family"] == 2 and l3[("l1_oneshot", "largest_oneshot")]["n"] == 4


def test_l5_skip_with_match_macs_is_paired_with_the_uniform_arm_it_removes_at_least_as_much_as(tmp_path):
    rows = []
    for s in range(3):
        uniform = resolved_config(s, strategy__match=None)
        rows.append(run_row(s, final_acc=0.91 + 0.001 * s, macs=0.255, config=uniform))
        cfg = resolved_config(s, strategy__skip_sensitive=1, strategy__match="macs", strategy__scan=SCAN)
        rows.append(run_row(s, final_acc=0.905, macs=0.254, strategy="l1_skip_sensitive", skip_sensitive=1, config=cfg))
    table = compare(write_store(tmp_path, rows))
    row = table[table["lesson"] == "L5-skip"].iloc[0]
    assert row["refused because"] == "" and row["annotation"] == "MACs ratio A 0.254 vs B 0.255"
    assert "strategy.match: macs vs null" in row["implied"] and row["outcome"] == "worse"


def test_the_declarations_state_the_new_pairing_rules():
    rules = declaration_table().set_index("claim (A > B)")["pairing"]
    assert f"nearest measured latency ratio at batch 64 (within {LATENCY_TOLERANCE}" in rules[LATENCY_CLAIM]
    layer = rules["smallest l1 > random, largest l1 per group, no retraining (Li Fig. 2c)"]
    assert "per group at ratios 0.3, 0.5, 0.7: l1 vs each of random, largest_l1" in layer
