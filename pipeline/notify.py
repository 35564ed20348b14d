"""Notifications: one JSON message to a webhook (a chat's incoming hook, an alerting endpoint).
A message that cannot be delivered is logged, never raised: it must not fail what it reports."""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

ATTEMPTS = 3
TIMEOUT_S = 10.0  # per attempt
BACKOFF_S = 2.0  # before the second attempt; doubled before each later one


def where(url: str) -> str:
    """The webhook without its path: hooks often carry their secret there."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def post_json(
    url: str,
    payload: dict[str, Any],
    *,
    timeout_s: float = TIMEOUT_S,
    attempts: int = ATTEMPTS,
    backoff_s: float = BACKOFF_S,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """POST `payload` as JSON; retried on errors that may pass (timeouts, refused connections,
    HTTP 5xx, 408, 429). True once delivered; False, logged, when it was not."""
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "hpo-pipeline"}
    problem = "not tried"
    for attempt in range(1, attempts + 1):
        request = urllib.request.Request(url, body, headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s):
                return True
        except urllib.error.HTTPError as exc:
            problem = f"HTTP {exc.code}"
            if exc.code < 500 and exc.code not in (408, 429):
                break  # the hook refuses this message: sending it again will not help
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            problem = "timed out" if isinstance(reason, TimeoutError) else str(reason)
        if attempt < attempts:
            sleep(backoff_s * 2 ** (attempt - 1))
    log.warning(
        "notification to %s not delivered after %d attempts: %s", where(url), attempt, problem
    )
    return False
