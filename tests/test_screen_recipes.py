"""The recipe screen's summary: mean ± std per recipe, repeated runs counted once, diverged baselines dropped."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "screen_recipes.py"


@pytest.fixture(scope="module")
def screen():
    spec = importlib.util.spec_from_file_location("screen_recipes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row(name, seed, delta, base=0.9, device="cpu"):
    return {
        "model": "lenet300",
        "seed": seed,
        "device": device,
        "recipe": {"name": name},
        "baseline_test": base,
        "final_test": base - delta / 100,
        "delta_pp": delta,
        "weights_ratio": 12.9,
    }


def test_summary_means_dedupes_and_drops_diverged_baselines(screen, tmp_path, capsys):
    a = tmp_path / "a.jsonl"
    b = tmp_path / "b.jsonl"
    a.write_text(
        "\n".join(
            json.dumps(r) for r in [row("x", 0, 0.2), row("x", 1, 0.4), row("y", 0, 0.1), row("y", 1, 5.0, base=0.1)]
        )
    )  # diverged: dropped
    b.write_text(json.dumps(row("x", 0, 0.2)) + "\n" + json.dumps(row("x", 0, 0.6, device="cuda")))
    screen.summarize([str(a), str(b)], plot=str(tmp_path / "s.png"))
    out = capsys.readouterr().out.splitlines()
    x = next(line for line in out if " x " in line).split()
    y = next(line for line in out if " y " in line).split()
    assert x[2] == "3" and float(x[3]) == pytest.approx(0.4, abs=1e-3)  # (0.2 + 0.4 + 0.6) / 3; the repeat counted once
    assert float(x[5]) == pytest.approx(0.2, abs=1e-3)  # std
    assert y[2] == "1" and float(y[3]) == pytest.approx(0.1, abs=1e-3)
    assert out.index(next(line for line in out if " y " in line)) < out.index(
        next(line for line in out if " x " in line)
    )
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_unknown_recipe_keys_are_rejected(screen, tmp_path, monkeypatch):
    grid = tmp_path / "g.json"
    grid.write_text(json.dumps([{"name": "bad", "learning_rate": 0.1}]))
    monkeypatch.setattr("sys.argv", ["screen_recipes.py", "--grid", str(grid), "--workers", "0"])
    with pytest.raises(SystemExit, match="unknown recipe keys \\['learning_rate'\\]"):
        screen.main()


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"swa_epochs": 1, "distill": 0.5},
        {"gradual": 2, "schedule": "cubic"},
        {"regrow": 0.3, "regrow_every": 1, "select": "best_val"},
    ],
)
def test_a_recipe_reaches_the_han_sparsities(screen, extra):
    import torch

    torch.manual_seed(0)
    split = lambda n: (torch.randn(n, 1, 28, 28), torch.randint(0, 10, (n,)))  # noqa: E731
    data = {"train": split(256), "val": split(64), "test": split(64)}
    base = screen.run_baseline("lenet300", 0, 1, 5e-4, data, "cpu")
    recipe = {**screen.DEFAULT, "rounds": 2, "epochs": 1, "batch_size": 64, **extra}
    out = screen.run_recipe("lenet300", recipe, 0, base, data, "cpu")
    # Han's per-layer kept fractions 7.5% / 9% / 26% of 235,200 / 30,000 / 1,000 weights
    assert out["weights_ratio"] == pytest.approx(266200 / (17640 + 2700 + 260), rel=1e-3)
    assert out["delta_pp"] == pytest.approx(100 * (base["test"] - out["final_test"]), abs=1e-3)


@pytest.mark.parametrize("model", ["lenet300", "lenet5"])
def test_screen_prunes_to_the_presets_sparsities(screen, model):
    from omegaconf import OmegaConf

    preset = OmegaConf.load(SCRIPT.parents[1] / "conf" / "experiment" / f"han2015_{model}.yaml")
    assert screen.HAN_SPARSITY[model] == OmegaConf.to_container(preset.strategy.sparsity)
    assert screen.BASELINE_EPOCHS[model] == preset.baseline.epochs
