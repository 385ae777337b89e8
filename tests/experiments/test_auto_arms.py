"""Every study arm on a converged baseline (``baseline.epochs=auto``): arms that repeat the baseline's
epochs (``retrain.epochs: baseline``, Scratch-E/B) use the epochs it trained, rewinding replays its
schedule over the cap, and bad values are refused before training."""

import functools

import pytest
import torch
from hydra.utils import instantiate

import pruning
from experiments.checks import ConfigError
from experiments.run.pipeline import RunSettings, run
from experiments.run.validation import validate_config
from experiments.strategies.parts import Retrain, check_retrain_epochs
from experiments.strategies.plan import Runtime, Train, dry_run, rewind_start
from experiments.training.context import BaselineRecipe
from experiments.training.module import Classifier, lr_factor
from experiments.training.plateau import PlateauRule, ValidationCurve
from tests.experiments.conftest import FAST
from tests.experiments.test_configs import study_arms
from tests.experiments.test_rewind import STEPS_PER_EPOCH, RecordingSGD, context, tiny

STUDIES = ("schedules", "criteria", "scratch", "sensitivity", "freeze", "greedy", "latency", "all", "operating_points")
ARMS = {arm: study for study in STUDIES for arm in study_arms(study)}  # each arm once, with a study sweeping it
CAP = 30  # conf/config.yaml baseline.max_epochs


def dry_plan(compose_cfg, *overrides):
    """What ``run`` does before the baseline trains: the config checks, the settings and the dry run of the plan."""
    cfg = compose_cfg("dataset=synthetic", "dataset.input_size=28", *overrides)  # Fashion-MNIST's shape, no files
    validate_config(cfg)
    settings = RunSettings.from_config(cfg)
    build = lambda: instantiate(cfg.model, num_classes=10, in_channels=1, input_size=28)  # noqa: E731
    model, x = build(), torch.randn(2, 1, 28, 28)
    rt = Runtime(
        example=x,
        build_model=build,
        strategy=None,
        seed=0,
        baseline=settings.baseline.recipe,
        measure=settings.measure,
        dense_counts=pruning.count(model, x),
    )
    return settings, build, dry_run(lambda: instantiate(cfg.strategy, _convert_="all"), model, rt)


# the latency arms plan from timings of the model, not from the baseline's epochs (they plan, timed, in
# test_configs.py::test_every_arm_plans_on_vgg_small)
@pytest.mark.parametrize("arm", [a for a in sorted(ARMS) if "latency" not in a])
def test_every_study_arm_passes_the_dry_run_on_an_auto_baseline(compose_cfg, arm):
    settings, _, steps = dry_plan(compose_cfg, f"study={ARMS[arm]}", f"arm={arm}", "baseline.epochs=auto")
    recipe = settings.baseline.recipe
    assert recipe.auto and recipe.pending and (recipe.epochs, recipe.schedule_length) == (CAP, CAP)
    trains = [s for s in steps if isinstance(s, Train)]
    assert steps and all(isinstance(t.retrain.epochs, int) for t in trains)  # no word left for the steps to count
    if "e_baseline" in arm:  # planned with the most an auto baseline may train: the cap
        assert trains[-1].retrain.follows_baseline and trains[-1].retrain.epochs == CAP
        assert trains[-1].steps == CAP  # one optimizer step per epoch in the dry run


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("strategy.retrain.epochs=auto", r"'auto': must be an integer >= 0 or baseline .*: write baseline"),
        ("strategy.retrain.epochs=${baseline.epochs}", r"strategy.retrain.epochs='auto': must be an integer >= 0"),
        ("strategy.retrain.epochs=baselin", r"strategy.retrain.epochs='baselin': must be an integer >= 0 or baseline"),
        ("strategy.retrain.epochs=-1", r"strategy.retrain.epochs=-1: must be an integer >= 0 or baseline"),
        ("strategy.retrain.epochs=5", r"rewind_epoch=None replays the baseline's last 5 epoch\(s\), but baseline"),
    ],
)
def test_bad_retrain_epochs_on_an_auto_baseline_are_refused_before_training(compose_cfg, tmp_path, override, message):
    fast = [o for o in FAST if not o.startswith(("baseline.epochs", "strategy.retrain.epochs"))]
    # rewinding the last 5 epochs needs 5, but the rule (window 3) may stop the baseline after 4
    with pytest.raises(ConfigError, match=message):
        run(compose_cfg(*fast, "threads=1", "baseline.epochs=auto", "arm=l1_oneshot-rewind", override))
    assert not (tmp_path / ".cache").exists(), "training started before validation"


def test_retrain_epochs_take_a_number_or_baseline():
    assert check_retrain_epochs("k", 3) == 3 and check_retrain_epochs("k", "baseline") == "baseline"
    retrain = Retrain(epochs="baseline", optimizer=torch.optim.SGD)
    retrain.validate()
    assert retrain.epochs_given == "baseline" and not retrain.follows_baseline
    recipe = BaselineRecipe(epochs=CAP, lr_schedule="cosine", optimizer=None, plateau=PlateauRule(max_epochs=CAP))
    retrain.follow_baseline(recipe)
    assert (retrain.epochs, retrain.epochs_given) == (CAP, "baseline")
    retrain.follow_baseline(recipe.trained(7))  # planned again once the baseline has trained
    assert (retrain.epochs, retrain.epochs_given) == (7, "baseline")
    with pytest.raises(ConfigError, match="strategy.retrain.epochs=baseline repeats the baseline's epochs, but"):
        Retrain(epochs="baseline").follow_baseline(None)


@pytest.mark.parametrize(("arm", "cap"), [("l1_scratch_b", 2.0), ("l1_scratch_b-uncapped", None)])
def test_scratch_b_scales_the_epochs_an_auto_baseline_trained(compose_cfg, arm, cap):
    settings, build, steps = dry_plan(compose_cfg, "study=scratch", f"arm={arm}", "baseline.epochs=auto")
    scratch = next(s for s in steps if isinstance(s, Train) and s.init == "reinit")
    dense = build()
    x = torch.randn(2, 1, 28, 28)
    strategy = scratch.epochs.__self__  # the dry run's strategy, its model cut to the plan
    pruned = build()
    pruning.apply_record(pruned, strategy.structure_record())
    macs = pruning.count(dense, x).macs / pruning.count(pruned, x).macs
    assert macs == pytest.approx(3.92, abs=0.01)  # half the filters of every group: about a quarter of the MACs
    rt = Runtime(example=x, build_model=build, strategy=strategy, seed=0, baseline=settings.baseline.recipe.trained(7))
    epochs = scratch.epochs(pruned, rt)
    assert epochs == (27 if cap is None else 14)  # int(7 x 3.92), or capped at 2 x 7
    assert epochs == (int(7 * macs) if cap is None else min(int(7 * cap), int(7 * macs)))
    rt.baseline = settings.baseline.recipe  # the dry run: the cap of 30 epochs
    assert scratch.epochs(pruned, rt) == (117 if cap is None else 60)


def test_rewinding_an_auto_baseline_replays_its_schedule_over_the_cap(tmp_path):
    ctx = context(tmp_path)
    baseline_lrs, rewind_lrs = [], []
    rule = PlateauRule(pp=1000, window=1, max_epochs=5)  # any curve is flat: stops at epoch 2 of 5
    recipe = BaselineRecipe(5, "cosine", functools.partial(RecordingSGD, lrs=baseline_lrs, lr=0.1), plateau=rule)
    recorder = ValidationCurve(rule)
    model = tiny()
    ctx.fit(Classifier(model, recipe.optimizer, recipe.lr_schedule), "baseline", recipe.epochs, callbacks=[recorder])
    assert recorder.epochs == 2 and len(baseline_lrs) == 2 * STEPS_PER_EPOCH
    total = 5 * STEPS_PER_EPOCH  # the schedule spans the cap
    assert baseline_lrs == pytest.approx([0.1 * lr_factor("cosine", s, total) for s in range(6)], rel=1e-12)
    trained = replace_optimizer(recipe, rewind_lrs).trained(recorder.epochs)
    rt = Runtime(example=torch.zeros(2, 1, 8, 8), build_model=tiny, strategy=None, seed=0, baseline=trained, ctx=ctx)
    Train("retrain", Retrain(epochs=1, lr_schedule="rewind")).run(model, rt)
    assert rt.totals["rewind_epoch"] == 1  # the baseline's last epoch, replayed step by step
    assert rewind_lrs == pytest.approx(baseline_lrs[3:6], rel=1e-12)
    rewind_lrs.clear()
    Train("retrain", Retrain(epochs=2, lr_schedule="rewind", rewind_epoch=3)).run(model, rt)
    assert rt.totals["rewind_epoch"] == 3  # past where the baseline stopped: the cap's schedule, epochs 4 and 5
    assert rewind_lrs == pytest.approx([0.1 * lr_factor("cosine", s, total) for s in range(9, 15)], rel=1e-12)
    rewind_lrs.clear()
    follows = Retrain(epochs="baseline", lr_schedule="rewind")
    follows.follow_baseline(trained)
    Train("retrain", follows).run(model, rt)  # the whole baseline run replayed: epochs 1 and 2
    assert rt.totals["rewind_epoch"] == 0 and rewind_lrs == pytest.approx(baseline_lrs, rel=1e-12)
    assert rt.totals["retrain_epochs"] == 1 + 2 + 2


def test_rewinding_the_last_epochs_of_a_pending_auto_baseline_must_fit_its_shortest_run():
    pending = BaselineRecipe(CAP, "cosine", None, plateau=PlateauRule(window=3, max_epochs=CAP))
    assert pending.fewest_epochs == 4
    assert rewind_start(Retrain(epochs=4, lr_schedule="rewind"), pending) == CAP - 4
    with pytest.raises(ConfigError, match=r"may stop after 4 \(baseline.plateau_window=3 \+ 1\): give .* in \[0, 25\]"):
        rewind_start(Retrain(epochs=5, lr_schedule="rewind"), pending)
    assert rewind_start(Retrain(epochs=5, lr_schedule="rewind", rewind_epoch=20), pending) == 20
    assert rewind_start(Retrain(epochs=5, lr_schedule="rewind"), pending.trained(9)) == 4  # trained: its own epochs


def replace_optimizer(recipe, lrs):
    """``recipe`` with a fresh recording optimizer (the rewind records its own learning rates)."""
    from dataclasses import replace

    return replace(recipe, optimizer=functools.partial(RecordingSGD, lrs=lrs, lr=0.1))


AUTO = [o for o in FAST if not o.startswith(("baseline.epochs", "strategy.retrain.epochs"))] + [
    "threads=1",
    "baseline.epochs=auto",
    "baseline.max_epochs=4",
    "baseline.plateau_window=1",
    "baseline.plateau_pp=1000",  # any curve is flat by it: the rule stops at epoch 2 (window + 1)
]


def test_e_baseline_and_scratch_b_retrain_for_the_epochs_an_auto_baseline_trained(compose_cfg):
    row = run(compose_cfg(*AUTO, "arm=l1_oneshot-e_baseline"))
    assert row["baseline_training"]["epochs_trained"] == 2 and row["metrics"]["baseline/epochs"] == 2
    assert row["metrics"]["retrain/epochs"] == 2  # not the cap of 4, nor retrain.epochs' default
    assert row["config"]["strategy"]["retrain"]["epochs"] == "baseline"
    assert (row["parts"]["retrain_epochs"], row["parts"]["epochs_budget"]) == ("baseline", "baseline")
    assert row["parts"]["baseline_epochs"] == "auto"
    scratch = run(compose_cfg(*AUTO, "arm=l1_scratch_b"))  # the cached baseline brings its epochs along
    metrics = scratch["metrics"]
    assert metrics["baseline/reused"] is True and metrics["baseline/epochs"] == 2
    matched = int(2 * metrics["baseline/macs"] / metrics["retrained/macs"])
    assert matched > 4 and metrics["retrain/epochs"] == 4  # capped at 2 x the 2 epochs the baseline trained
    # its budget is named, not counted: a number would differ from seed to seed and split the arm in the report
    assert scratch["parts"]["epochs_budget"] == "baseline x MACs" and scratch["parts"]["retrain"] == "scratch_b"
