"""structlog set-up for the service: one JSON object per line on stderr.

Called from the CLI only, never at import. Log lines carry ids, sizes, reasons and digests;
never an update's bytes, never a key (the enclave core does not hand either to a logger).
"""

from __future__ import annotations

import logging
import sys

import structlog

__all__ = ["configure_logging"]


def configure_logging(level: str = "info") -> None:
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}")
    logging.basicConfig(stream=sys.stderr, level=numeric, format="%(message)s")
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=True),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=True,
    )


def _stderr_logger(*_args: object) -> structlog.PrintLogger:
    # A writer that looks up sys.stderr at every line, not once at set-up: an embedding
    # process (or a test run in-process) may replace and close the stream it had then.
    return structlog.PrintLogger(file=_CurrentStderr())  # type: ignore[arg-type]


class _CurrentStderr:
    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()
