"""The report end to end on runs the real pipeline makes here (tiny synthetic settings)."""

from pathlib import Path

import pytest

from analysis.load import load_layers, load_runs, read_store
from analysis.report import build_report
from experiments.run.pipeline import run
from tests.experiments.conftest import FAST


@pytest.mark.slow
def test_report_from_pipeline_runs(compose_cfg, tmp_path):
    tiny = [o for o in FAST if not o.startswith("model=")] + [
        "model=vgg_small",
        "logger=[csv]",
        "measure.latency_batch_sizes=[1]",
    ]
    for seed in (0, 1):
        for strategy in ("l1_oneshot", "random_oneshot", "l1_freeze_sensitive"):
            cfg = compose_cfg(*tiny, f"strategy={strategy}", f"seed={seed}")
            from omegaconf import open_dict

            with open_dict(cfg):
                cfg.paths.output_dir = str(tmp_path / f"out_{strategy}_{seed}")
            run(cfg)
    store = tmp_path / "results"
    runs = load_runs(read_store(store))
    assert len(runs) == 6 and set(runs["criterion"]) == {"l1", "random"}
    assert runs.groupby("strategy")["seed"].nunique().to_dict() == {
        "l1_freeze_sensitive": 2,
        "l1_oneshot": 2,
        "random_oneshot": 2,
    }
    layers = load_layers(read_store(store))
    assert (layers["kept_fraction"].dropna() <= 1).all() and len(layers) > 0
    sections, status = build_report(store, tmp_path / "reports")
    index = (tmp_path / "reports" / "index.md").read_text()
    assert "Sensitivity" in index or "sensitivity" in index
    assert any(word in index for word in ("better", "worse", "equivalent", "inconclusive"))
    # real resolved configs: the arms differ only in the lesson's part (and what it implies), so nothing is refused
    import pandas as pd

    table = pd.read_csv(tmp_path / "reports" / "verdicts.csv", keep_default_na=False)
    l3 = table[table["lesson"] == "L3"].iloc[0]
    assert (l3["differs in (part)"], l3["refused because"], l3["n"]) == ("strategy.criterion: l1 vs random", "", 2)
    l5 = table[table["lesson"] == "L5"].iloc[0]
    assert l5["refused because"] == "" and l5["differs in (part)"].startswith("strategy.freeze")
    assert l5["implied"].startswith("strategy.scan")
    assert list(Path(tmp_path / "reports").rglob("*.png"))
