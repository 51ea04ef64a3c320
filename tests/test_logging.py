"""The aggregator's log: one JSON object per line on stderr (aggregator/_logging.py), its
own events and the standard library's records from the code it runs alike."""

from __future__ import annotations

import json
import subprocess
import sys

_EMIT = """
import logging, structlog
from aggregator._logging import configure_logging
configure_logging("info")
structlog.get_logger("fedseal.aggregator").info("started", port=1)
logging.getLogger("attestation._simulated").warning("INSECURE simulated TEE collector in use (%s)", "ab")
logging.getLogger("somelib").debug("below the level")
try:
    raise ValueError("bad value")
except ValueError:
    logging.getLogger("somelib").exception("it failed")
"""


def test_every_line_is_a_json_object_standard_library_records_included() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _EMIT], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout == ""
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert [(line["level"], line["event"]) for line in lines] == [
        ("info", "started"),
        ("warning", "INSECURE simulated TEE collector in use (ab)"),
        ("error", "it failed"),
    ]
    assert lines[0]["port"] == 1
    assert lines[1]["logger"] == "attestation._simulated"
    assert "ValueError: bad value" in lines[2]["exception"]
    assert all(line["timestamp"].endswith("Z") for line in lines)
