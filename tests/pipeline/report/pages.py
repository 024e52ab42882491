"""Reading a report page in tests: its sections, tiles and thumbnails, and the page as headless Chromium loads and
paints it."""

from __future__ import annotations

import base64
import html
import io
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=5000", "--enable-logging=stderr", "--v=0"]


def chromium():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is not installed; make test installs Debian's chromium package")
        pytest.skip("Chromium is not installed (Debian package chromium)")
    return path


def load_in_chromium(html_path, tmp_path) -> tuple[str, list[str], str]:
    """Load the page in headless Chromium; return the <body ...> tag of the DOM after its scripts ran, the
    page's console messages, and the whole DOM."""
    out = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                          f"file://{html_path}"], capture_output=True, text=True, timeout=120)
    start = out.stdout.find("<body")
    assert start >= 0, out.stderr[-2000:]
    console = [line for line in out.stderr.splitlines() if ":CONSOLE" in line]
    return out.stdout[start:out.stdout.find(">", start) + 1], console, out.stdout


def screenshot(html_path, tmp_path, width=1200, height=2400) -> np.ndarray:
    """The page as headless Chromium paints it, as an RGB array."""
    shot = tmp_path / "shot.png"
    out = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'shot-profile'}",
                          f"--window-size={width},{height}", "--hide-scrollbars", f"--screenshot={shot}",
                          f"file://{html_path}"], capture_output=True, text=True, timeout=120)
    assert shot.exists(), out.stderr[-2000:]
    return np.asarray(Image.open(shot).convert("RGB"))


def section(page: str, element_id: str) -> str:
    """The text of ``<section id=element_id>...</section>`` (sections do not nest)."""
    start = page.index(f'<section id="{element_id}"')
    return page[start:page.index("</section>", start)]


def tile_keys(text: str) -> list[str]:
    return [html.unescape(k) for k in re.findall(r'<figure class="tile" data-key="([^"]*)"', text)]


def thumbnails(text: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(b)))
            for b in re.findall(r'<img class="thumb" alt="[^"]*" src="data:image/jpeg;base64,([^"]+)"', text)]
