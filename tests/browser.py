"""Headless Chromium (Debian's, installed by `make`) driven through playwright, for report tests.

Playwright never downloads a browser here: it launches /usr/bin/chromium (or $CHROMIUM). Every
console error, uncaught page error and request that leaves file: URLs is recorded, and requests
to the network are refused, so a page that needs a CDN fails its test."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def chromium_path() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("chromium is not installed: run `make install` (apt-get install chromium) or set $CHROMIUM")
    return path


@contextlib.contextmanager
def open_page(path: Path, *, width: int = 1400, height: int = 1000):
    """(page, problems): `path` opened from a file: URL; problems collects console errors, page
    errors and any request that is not a file: or data: URL (refused)."""
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))

            def refuse_network(route):
                if route.request.url.startswith(("file:", "data:", "blob:")):
                    return route.continue_()
                problems.append(f"network request: {route.request.url}")
                return route.abort()

            page.route("**/*", refuse_network)
            page.goto(Path(path).resolve().as_uri())
            page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length > 0", timeout=30_000)
            yield page, problems
        finally:
            browser.close()


def plot_points(page, element_id: str, role: str = "designs") -> int:
    """Points drawn in a plotly figure by the traces with meta.role == role (read from the live
    graph div, i.e. what plotly.js drew)."""
    return page.evaluate(
        """([id, role]) => document.getElementById(id).data
             .filter(t => t.meta && t.meta.role === role).reduce((n, t) => n + t.x.length, 0)""",
        [element_id, role])
