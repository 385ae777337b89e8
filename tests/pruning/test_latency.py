import pytest
import torch
from torch import nn

import pruning
from pruning.latency.comparison import median_interval


def tiny(width: int = 8) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def test_same_model_against_itself_is_one():
    torch.manual_seed(0)
    m = tiny()
    before = torch.get_num_threads()
    r = pruning.compare_latency(m, m, torch.randn(1, 3, 16, 16), 1, warmup=2, min_rounds=8, max_time_s=1.5, threads=1)
    assert abs(r.ratio - 1.0) <= 0.05
    assert r.ci_low <= r.ratio <= r.ci_high
    assert r.rounds >= 8 and r.threads == 1 and torch.get_num_threads() == before
    assert r.median_a_ms > 0 and r.median_b_ms > 0
    assert r.device == pruning.latency.cpu_model() and r.device
    d = r.as_dict()
    assert d["batch_size"] == 1 and set(d) >= {"ratio", "ci_low", "ci_high", "rounds", "converged", "threads", "device"}


def test_a_model_doing_more_work_is_slower():
    torch.manual_seed(0)
    small, big = tiny(4), tiny(64)
    x = torch.randn(1, 3, 32, 32)
    r = pruning.compare_latency(small, big, x, 4, warmup=1, min_rounds=6, max_time_s=1.5, threads=1)
    assert r.ratio > 1.5  # B / A: the 16x wider model is slower (about 2x on a 2-core EPYC, 1 thread)
    assert r.median_b_ms > r.median_a_ms


def test_training_flags_restored_and_bad_arguments_rejected():
    m = tiny().train()
    pruning.compare_latency(m, m, torch.randn(1, 3, 8, 8), 2, warmup=0, min_rounds=1, max_time_s=0.05)
    assert m.training
    with pytest.raises(ValueError, match="ci="):
        pruning.compare_latency(m, m, torch.randn(1, 3, 8, 8), 1, ci=0)
    with pytest.raises(ValueError, match="batch_size=0"):
        pruning.compare_latency(m, m, torch.randn(1, 3, 8, 8), 0)
    with pytest.raises(ValueError, match="threads=0"):
        pruning.compare_latency(m, m, torch.randn(1, 3, 8, 8), 1, threads=0)


def test_median_interval_is_the_sign_test_interval():
    xs = [float(i) for i in range(1, 21)]  # n = 20: the 95% interval is [x(6), x(15)]
    assert median_interval(xs) == (6.0, 15.0)
    assert median_interval([1.0, 2.0, 3.0, 4.0, 5.0]) == (1.0, 5.0)  # too few for a bound
    assert median_interval([float(i) for i in range(1, 7)]) == (1.0, 6.0)  # n = 6: coverage 1 - 2/64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_events_path():
    m = tiny(32).cuda()
    r = pruning.compare_latency(m, m, torch.randn(1, 3, 32, 32), 8, warmup=2, min_rounds=8, max_time_s=2.0)
    assert abs(r.ratio - 1.0) <= 0.05
    assert r.device == torch.cuda.get_device_name(0)
    assert r.median_a_ms > 0
