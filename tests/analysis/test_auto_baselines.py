"""Studies on baselines trained to their plateau (``baseline.epochs=auto``): every seed's baseline stops at
its own epoch, and the arms that repeat its epochs (Scratch-E/B) must stay one arm, paired seed by seed."""

from __future__ import annotations

from analysis.output import context_title
from analysis.verdicts import comparisons
from tests.analysis.study_rows import study_store


def test_scratch_arms_on_auto_baselines_pair_on_every_seed(tmp_path):
    auto = comparisons(study_store(tmp_path / "auto", seeds=6, auto=True))[0]
    fixed = comparisons(study_store(tmp_path / "fixed", seeds=6))[0]
    assert sorted(zip(auto["lesson"], auto["A"], auto["B"])) == sorted(zip(fixed["lesson"], fixed["A"], fixed["B"]))
    l4 = auto[auto["lesson"] == "L4"]
    assert len(l4) == 4 and set(l4["B"]) == {"l1_scratch_e", "l1_scratch_b-uncapped"}
    assert (l4["n"] == 6).all()  # not split by the epochs each seed's baseline trained


def test_context_title_names_an_auto_baseline():
    row = {"dataset": "fashion_mnist", "model": "vgg_small", "baseline_epochs": "auto"}
    assert context_title(row) == "fashion_mnist / vgg_small (baseline to its plateau)"
    assert context_title({**row, "baseline_epochs": 4}) == "fashion_mnist / vgg_small (baseline 4 ep)"
