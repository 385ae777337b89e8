"""Experiment tracking checks: is the W&B server reachable before a run logs online?

Without a network, ``wandb.init`` in online mode retries for about 95 s and then fails with
a long traceback. :func:`check_wandb_online` answers within ``timeout_s`` by opening one TCP
connection to the W&B host (or the HTTPS proxy that would carry the traffic) and closing
it: nothing is sent beyond the TCP handshake.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import urllib.request
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.wandb.ai"


class TrackingUnavailable(RuntimeError):
    """The tracking server cannot be reached; the message names the fix."""


def wandb_base_url() -> str:
    """The W&B server this process would log to: ``WANDB_BASE_URL``, else the public cloud."""
    return os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL


def _endpoint(url: str) -> tuple[str, int]:
    """(host, port) of ``url``; the default port of its scheme when none is given."""
    parts = urlsplit(url if "://" in url else f"https://{url}")
    if not parts.hostname:
        raise TrackingUnavailable(
            f"W&B base URL {url!r} has no host name: fix WANDB_BASE_URL (e.g. https://api.wandb.ai)"
        )
    try:
        port = parts.port
    except ValueError:
        raise TrackingUnavailable(f"W&B base URL {url!r} has an invalid port: fix WANDB_BASE_URL") from None
    return parts.hostname, port or (80 if parts.scheme == "http" else 443)


def _proxy_for(url: str) -> str | None:
    """The proxy URL that requests to ``url`` would go through (``HTTPS_PROXY`` etc.), if any."""
    parts = urlsplit(url if "://" in url else f"https://{url}")
    if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme or "https")


def _connect(host: str, port: int, timeout_s: float) -> None:
    """Open and close one TCP connection; raises OSError when it cannot."""
    sock = socket.create_connection((host, port), timeout=timeout_s)
    sock.close()


def check_wandb_online(timeout_s: float = 5.0, fallback_offline: bool = False, base_url: str | None = None) -> str:
    """Check within ``timeout_s`` that the W&B server accepts connections.

    Returns ``"online"`` when it does. When it does not, raises :class:`TrackingUnavailable`
    with a one-line fix, or with ``fallback_offline=True`` logs a warning and returns
    ``"offline"`` (the value for ``WANDB_MODE``; sync the run later with ``wandb sync``).
    ``base_url`` defaults to :func:`wandb_base_url`.
    """
    url = base_url or wandb_base_url()
    proxy = _proxy_for(url)
    host, port = _endpoint(proxy or url)
    target = f"{host}:{port}" + (f" (proxy for {url})" if proxy else f" ({url})")
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            _connect(host, port, timeout_s)
            outcome.append(None)
        except BaseException as err:  # reported to the caller's thread
            outcome.append(err)

    # name resolution has no timeout of its own: run it all in a thread and stop waiting
    worker = threading.Thread(target=attempt, name="wandb-reachability", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if outcome and outcome[0] is None:
        return "online"
    why = f"{type(outcome[0]).__name__}: {outcome[0]}" if outcome else f"no answer within {timeout_s:g}s"
    message = (
        f"W&B server {target} is unreachable ({why}); log offline with logger.wandb.offline=true "
        "(sync later with `wandb sync`), or fix the network or WANDB_BASE_URL"
    )
    if fallback_offline:
        log.warning("%s. Logging offline instead.", message.split("; ")[0])
        return "offline"
    raise TrackingUnavailable(message)
