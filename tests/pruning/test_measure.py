import os
import platform
import subprocess
import sys

import pytest
import torch
from torch import nn

from pruning import count, measure_latency
from pruning.measure import dense_bytes, nonzero_params


def lenet300():
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10)
    )


def lenet5():
    return nn.Sequential(
        nn.Conv2d(1, 20, 5),
        nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(800, 500),
        nn.ReLU(),
        nn.Linear(500, 10),
    )


def test_lenet300_counts_match_han2015():
    c = count(lenet300(), torch.randn(2, 1, 28, 28))
    assert c.params == 266_200  # weights only, the papers' rule
    assert c.macs == 266_200
    assert c.params_total == 266_200 + 300 + 100 + 10
    assert c.macs_total == 266_200 + 410
    assert c.nonzero_params == 266_200


def test_lenet5_counts_match_han2015():
    c = count(lenet5(), torch.randn(1, 1, 28, 28))
    assert c.params == 430_500
    conv1 = 20 * 24 * 24 * 25
    conv2 = 50 * 8 * 8 * 20 * 25
    assert c.macs == conv1 + conv2 + 800 * 500 + 500 * 10


def test_grouped_conv_and_bn_counts():
    m = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8))
    c = count(m, torch.randn(1, 8, 4, 4))
    assert c.params == 8 * 9 and c.macs == 8 * 16 * 9
    assert c.macs_total == c.macs + 8 * 16 and c.params_total == 72 + 16


def test_nonzero_counts_follow_zeros():
    m = lenet300()
    with torch.no_grad():
        m[1].weight[:, :392] = 0
    c = count(m, torch.randn(1, 1, 28, 28))
    assert c.nonzero_params == nonzero_params(m) == 266_200 - 300 * 392
    assert c.nonzero_macs == 266_200 - 300 * 392


def test_bytes_and_latency():
    m = lenet300()
    assert dense_bytes(m) == 4 * (266_200 + 410)
    t = measure_latency(m, torch.randn(1, 1, 28, 28), batch_size=4, repeats=3)
    assert 0 < t < 1.0


_MALLINFO_PROBE = """
import ctypes, sys, torch
import pruning
from pruning.measure import steady_allocator

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "measure":
    pruning.measure_latency(torch.nn.Conv2d(3, 4, 3), torch.randn(1, 3, 8, 8), repeats=1, warmup=0)
    applied = True
else:
    applied = steady_allocator()
before = libc.mallinfo2().hblkhd
x = torch.empty(5 * 2**20)  # 20 MiB of float32: mapped afresh unless malloc keeps it in its heap
print(applied, libc.mallinfo2().hblkhd - before)
"""


def _probe(mode: str, env: dict | None = None) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", _MALLINFO_PROBE, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
    ).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or sys.platform != "linux", reason="glibc's malloc only")
def test_timing_keeps_freed_memory_in_the_heap_unless_told_not_to():
    # a fresh process maps a 20 MiB block on its own; once latency has been timed, malloc
    # serves it from its heap (no page faults that depend on what the process did before)
    applied, mapped = _probe("measure")
    assert (applied, mapped) == ("True", 0)
    applied, mapped = _probe("direct", {"PRUNEKIT_STEADY_ALLOCATOR": "0"})
    assert applied == "False" and mapped >= 20 * 2**20
