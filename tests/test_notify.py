"""The webhook: delivered once to a server that answers, retried on one that fails, given up on
one that never answers; never raised. Real HTTP servers on localhost."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from pipeline import notify
from tests.conftest import Hook


@pytest.fixture()
def hook(request: pytest.FixtureRequest) -> Iterator[Hook]:
    served = Hook(request.param)
    yield served
    served.close()


@pytest.mark.parametrize("hook", [200], indirect=True)
def test_a_message_is_delivered_once(hook: Hook) -> None:
    assert notify.post_json(hook.url, {"outcome": "promoted", "version": "3"})
    assert hook.received == [{"outcome": "promoted", "version": "3"}]


@pytest.mark.parametrize("hook", [500], indirect=True)
def test_a_failing_hook_is_retried_with_backoff_then_given_up(
    hook: Hook, caplog: pytest.LogCaptureFixture
) -> None:
    pauses: list[float] = []
    assert not notify.post_json(hook.url, {"outcome": "kept"}, sleep=pauses.append)
    assert len(hook.received) == notify.ATTEMPTS
    assert pauses == [notify.BACKOFF_S * 2**i for i in range(notify.ATTEMPTS - 1)]
    assert "HTTP 500" in caplog.text
    assert "secret-token" not in caplog.text, "the hook's path (its secret) is never logged"


@pytest.mark.parametrize("hook", [404], indirect=True)
def test_a_refusing_hook_is_not_retried(hook: Hook) -> None:
    assert not notify.post_json(hook.url, {"outcome": "kept"}, sleep=lambda _: None)
    assert len(hook.received) == 1


def test_a_hook_that_never_answers_costs_the_timeout_per_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server that accepts connections and never answers: each attempt times out."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        pauses: list[float] = []
        delivered = notify.post_json(url, {"outcome": "failed"}, timeout_s=0.2, sleep=pauses.append)
    assert not delivered
    assert len(pauses) == notify.ATTEMPTS - 1, "every attempt timed out and was retried"
    assert "timed out" in caplog.text


def test_an_unreachable_hook_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert not notify.post_json(f"http://127.0.0.1:{port}/", {}, sleep=lambda _: None)
    assert "not delivered after 3 attempts" in caplog.text
