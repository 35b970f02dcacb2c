"""The test agents' ports: handed out once, and a start that lost a port to a race is retried."""

from __future__ import annotations

import pytest

from lake_mesh_consul.errors import ProvisioningError
from lake_mesh_consul.testing._agent import free_port, retry_on_bind_conflict

_TAKEN = "listen udp 127.0.0.1:{port}: bind: address already in use"


def test_free_port_never_hands_out_a_port_twice_in_a_process() -> None:
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)


def test_a_start_that_lost_a_serf_port_is_run_again() -> None:
    calls: list[int] = []

    def start() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ProvisioningError("the agent exited\n" + _TAKEN.format(port=40579))
        return "up"

    pauses: list[float] = []
    assert (
        retry_on_bind_conflict(start, failure_text=str, http_port=8500, pause=pauses.append) == "up"
    )
    assert len(calls) == 3
    assert len(pauses) == 2
    assert pauses[0] < pauses[1]  # a growing pause between starts


def test_it_gives_up_after_the_attempts_and_raises_the_last_error() -> None:
    def start() -> None:
        raise RuntimeError(_TAKEN.format(port=40579))

    with pytest.raises(RuntimeError, match="40579") as caught:
        retry_on_bind_conflict(
            start, failure_text=str, http_port=8500, attempts=2, pause=lambda _s: None
        )
    notes = getattr(caught.value, "__notes__", None)
    if notes is not None:  # Python 3.11+: the error says what held the port
        assert any("port 40579" in note for note in notes)


@pytest.mark.parametrize(
    "text", [_TAKEN.format(port=8500), "no leader within 30s"], ids=["http port", "other"]
)
def test_a_taken_http_port_or_another_failure_is_not_retried(text: str) -> None:
    calls: list[int] = []

    def start() -> None:
        calls.append(1)
        raise RuntimeError(text)

    with pytest.raises(RuntimeError):
        retry_on_bind_conflict(start, failure_text=str, http_port=8500, pause=lambda _s: None)
    assert calls == [1]
