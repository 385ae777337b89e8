"""W&B reachability is checked in seconds, before an online run would hang for ~95 s."""

import logging
import socket
import time

import pytest

from experiments.storage.tracking import TrackingUnavailable, check_wandb_online


@pytest.fixture(autouse=True)
def no_proxy_or_base_url(monkeypatch):
    for var in (
        "WANDB_BASE_URL",
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ):
        monkeypatch.delenv(var, raising=False)


def closed_port() -> int:
    """A local port nobody listens on (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_refused_connection_fails_fast_naming_the_fix(monkeypatch):
    port = closed_port()
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    start = time.perf_counter()
    with pytest.raises(TrackingUnavailable) as err:
        check_wandb_online(timeout_s=5.0)
    assert time.perf_counter() - start < 3.0
    message = str(err.value)
    assert "\n" not in message and f"127.0.0.1:{port}" in message and "ConnectionRefusedError" in message
    assert "logger.wandb.offline=true" in message


def test_opt_in_falls_back_to_offline_with_a_warning(caplog):
    port = closed_port()
    with caplog.at_level(logging.WARNING, logger="experiments.storage.tracking"):
        mode = check_wandb_online(timeout_s=2.0, fallback_offline=True, base_url=f"http://127.0.0.1:{port}")
    assert mode == "offline"
    assert any(f"127.0.0.1:{port}" in r.getMessage() and "offline" in r.getMessage() for r in caplog.records)


def test_reachable_host_is_online_and_only_connected_to(monkeypatch):
    calls = []

    class Connection:
        def close(self) -> None:
            calls.append("close")

    def connect(address, timeout):
        calls.append((address, timeout))
        return Connection()

    monkeypatch.setattr("experiments.storage.tracking.socket.create_connection", connect)
    assert check_wandb_online(timeout_s=4.0) == "online"
    assert calls == [(("api.wandb.ai", 443), 4.0), "close"]
    calls.clear()
    monkeypatch.setenv("WANDB_BASE_URL", "http://wandb.internal:8080")
    assert check_wandb_online() == "online" and calls[0] == (("wandb.internal", 8080), 5.0)
    calls.clear()
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp:3128")  # the proxy carries the traffic
    assert check_wandb_online(base_url="https://api.wandb.ai") == "online" and calls[0][0] == ("proxy.corp", 3128)


def test_a_host_that_does_not_answer_times_out(monkeypatch):
    monkeypatch.setattr(
        "experiments.storage.tracking.socket.create_connection", lambda address, timeout: time.sleep(30)
    )
    start = time.perf_counter()
    with pytest.raises(TrackingUnavailable, match=r"no answer within 0.3s.*logger.wandb.offline=true"):
        check_wandb_online(timeout_s=0.3)
    assert time.perf_counter() - start < 2.0
