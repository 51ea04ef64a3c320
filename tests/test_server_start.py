"""A start-up that fails after the server started leaves nothing listening and the log closed."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from conftest import start_test_aggregator

from aggregator._rounds import RoundManager


def test_failed_first_round_stops_the_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def refuse(self: RoundManager) -> None:
        raise OSError("simulated: the first round cannot be opened")

    monkeypatch.setattr(RoundManager, "start_job", refuse)
    with pytest.raises(OSError, match="first round"):
        start_test_aggregator(
            tmp_path,
            listen=f"127.0.0.1:{port}",
        )
    # Nothing is left listening on the port.
    with socket.socket() as client:
        client.settimeout(1)
        with pytest.raises(OSError):
            client.connect(("127.0.0.1", port))
