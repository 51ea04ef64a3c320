"""argparse value types shared by the console commands: a bad value is a usage error that
names the flag (argparse prints `PROG: error: argument --FLAG: ...` and exits 2).

Python's float() takes "nan" and "inf", int() takes negatives, and gRPC takes any string
as an address (failing later with a traceback, or binding port 443 for a bare host), so
each flag says what it accepts here, before anything starts.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from pathlib import Path

from fedseal.errors import FormatError

__all__ = [
    "file_in_the_way",
    "host_port",
    "non_negative_seconds",
    "output_file_problem",
    "parse_host_port",
    "positive_int",
    "positive_seconds",
]

_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_IPV6 = re.compile(r"[0-9A-Fa-f:.]{2,45}")


def parse_host_port(text: str, *, what: str, allow_port_zero: bool = False) -> tuple[str, int]:
    """Split `HOST:PORT` (`[v6 address]:PORT` for IPv6); FormatError names `what`.

    The port is required: a bare host would make gRPC pick its default port (443).
    """
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise FormatError(f"{what} {text[:80]!r} is not HOST:PORT")
    port = int(port_text)
    low = 0 if allow_port_zero else 1
    if not low <= port < 65536:
        raise FormatError(f"{what} {text[:80]!r}: port must be {low} to 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not _IPV6.fullmatch(host):
            raise FormatError(f"{what} {text[:80]!r}: {host[:64]!r} is not an IPv6 address")
    elif not _HOSTNAME.fullmatch(host):
        raise FormatError(f"{what} {text[:80]!r}: {host[:64]!r} is not a host name or IPv4 address")
    return host, port


def host_port(*, allow_port_zero: bool = False) -> Callable[[str], str]:
    """argparse type: a `HOST:PORT` string, checked (returned unchanged)."""

    def parse(text: str) -> str:
        try:
            parse_host_port(text, what="address", allow_port_zero=allow_port_zero)
        except FormatError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text

    return parse


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# Past this, deadlines and clock arithmetic overflow (time_t, datetime) or gRPC refuses them:
# ~31 years is longer than any timeout, skew or rate period anyone means.
_MAX_SECONDS = 1e9


def _seconds(text: str, *, allow_zero: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = "non-negative" if allow_zero else "positive"
        raise argparse.ArgumentTypeError(f"must be a finite, {bound} number of seconds, got {text[:40]!r}")
    if value > _MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"must be at most {_MAX_SECONDS:.0e} seconds, got {text[:40]!r}")
    return value


def positive_seconds(text: str) -> float:
    """argparse type: a finite number > 0 (also for rates)."""
    return _seconds(text, allow_zero=False)


def non_negative_seconds(text: str) -> float:
    """argparse type: a finite number >= 0."""
    return _seconds(text, allow_zero=True)


def file_in_the_way(path: Path) -> Path | None:
    """The nearest existing path above `path` if it is a file (where a folder must be), else None."""
    existing = next((parent for parent in path.absolute().parents if parent.exists()), None)
    return existing if existing is not None and not existing.is_dir() else None


def output_file_problem(flag: str, path: Path) -> str | None:
    """Why `flag` cannot write a file at `path`, checked before any work (a folder there, a
    file where a folder must be, a folder that does not exist), or None."""
    if path.is_dir():
        return f"{flag} {path} is a folder; name the file to write"
    if (blocker := file_in_the_way(path)) is not None:
        return f"{flag} {path}: {blocker} is a file, not a folder"
    if not path.parent.is_dir():
        return f"{flag} {path}: the folder {path.parent} does not exist"
    return None
