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
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    # Libraries that log through the standard library (the simulated TEE's warning, for
    # one) come out as the same JSON objects, with the logger's name, not as bare text.
    handler = logging.StreamHandler(_CurrentStderr())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(sort_keys=True),
            ],
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                timestamper,
                structlog.processors.format_exc_info,
            ],
        )
    )
    # As before, a no-op where the root logger already has handlers (an embedding process).
    logging.basicConfig(level=numeric, handlers=[handler])
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            timestamper,
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
