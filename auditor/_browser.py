"""A headless Chromium, for the report's PNG summary: a screenshot of a local HTML file.

Run with networking features off and a throw-away profile; the page itself can load
nothing (its Content Security Policy). The browser is found on PATH (`chromium`,
`chromium-browser`, `google-chrome`); without one, `BrowserUnavailableError` says so.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from fedseal.errors import FedSealError

__all__ = ["BROWSER_FLAGS", "BrowserUnavailableError", "find_browser", "screenshot"]

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome")
BROWSER_FLAGS = (
    "--headless",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
)


class BrowserUnavailableError(FedSealError):
    """No headless browser to render with, or it failed."""


def find_browser() -> str:
    for name in BROWSER_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise BrowserUnavailableError(
        "no Chromium found on PATH (chromium, chromium-browser or google-chrome): install one to write "
        "the PNG summary (Debian: apt-get install chromium), or leave out --png"
    )


def screenshot(html: Path, png: Path, *, width: int = 1280, height: int = 1400, timeout: float = 120) -> None:
    """Render `html` (a local file) and write a `width` x `height` PNG to `png`."""
    browser = find_browser()
    with tempfile.TemporaryDirectory(prefix="fedseal-chromium-") as profile:
        try:
            done = subprocess.run(  # noqa: S603 - a fixed browser binary and our own arguments
                [
                    browser,
                    *BROWSER_FLAGS,
                    f"--user-data-dir={profile}",
                    f"--window-size={width},{height}",
                    f"--screenshot={png.resolve()}",
                    html.resolve().as_uri(),
                ],
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BrowserUnavailableError(f"{browser} did not render {html}: {exc}") from None
    if done.returncode != 0 or not png.is_file() or png.stat().st_size == 0:
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        raise BrowserUnavailableError(f"{browser} exited with {done.returncode} and wrote no PNG: {tail[0]}")
