"""Open an HTML report in a real headless browser (Chromium), screenshot it, and check what a reader sees.

Checks, on the page as Chromium rendered it (``--dump-dom``) and on the screenshot:

* the final-choice table has a ``val`` column (the scores the returned program was chosen on);
* exactly one row of it is marked ``★ chosen`` and drawn highlighted: the screenshot holds enough
  pixels of the chosen row's background colour (``tr.chosen``) to be a visible table row;
* the held-out accuracy before and after comes first, before any step's details.

Usage (exit 0 when every check passes, 1 otherwise, 2 when Chromium is missing)::

    python examples/tools/check_report_in_browser.py runs/demo/report.html --screenshot runs/demo/report.png
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

#: The chosen row's background in the report's CSS (``tr.chosen td{background:#fff3c4}``).
CHOSEN_RGB = (0xFF, 0xF3, 0xC4)
#: A highlighted table row at the default width is thousands of pixels; fewer means it was not drawn.
MIN_CHOSEN_PIXELS = 2000
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run")


def find_browser() -> str | None:
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


def _chromium(browser: str, *args: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              text=True, timeout=180, env={**os.environ, "DBUS_SESSION_BUS_ADDRESS": "disabled:"})


class _Tables(HTMLParser):
    """Tables as (headers, rows of (classes, cells)), and the order of h2 headings."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[tuple[list[str], list[tuple[str, list[str]]]]] = []
        self.headings: list[str] = []
        self._cell: list[str] | None = None
        self._row: tuple[str, list[str]] | None = None
        self._in_h2 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables.append(([], []))
        elif tag == "tr" and self.tables:
            self._row = (dict(attrs).get("class") or "", [])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "h2":
            self._in_h2, self._text = True, []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            text = " ".join("".join(self._cell).split())
            (self.tables[-1][0] if tag == "th" else self._row[1]).append(text)
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row[1]:
                self.tables[-1][1].append(self._row)
            self._row = None
        elif tag == "h2":
            self._in_h2 = False
            self.headings.append("".join(self._text))

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._in_h2:
            self._text.append(data)


def check_dom(dom: str) -> list[str]:
    """Problems with the rendered page's structure (empty when it reads right)."""
    page = _Tables()
    page.feed(dom)
    problems = []
    choice = [t for t in page.tables if "val" in t[0] and "chosen" in t[0]]
    if not choice:
        problems.append("no table with a `val` and a `chosen` column (the final choice on validation)")
    for headers, rows in choice:
        marked = [r for r in rows if any("\u2605 chosen" in c for c in r[1])]
        if len(marked) != 1:
            problems.append(f"a final-choice table marks {len(marked)} rows as chosen, not 1")
        elif "chosen" not in marked[0][0].split():
            problems.append("the row marked chosen is not drawn as chosen (class `chosen`)")
        if any(not r[1][headers.index("val")] for r in rows):
            problems.append("a final-choice row has no val score")
    if not page.headings or not page.headings[0].startswith("Result"):
        problems.append(f"the first section is {page.headings[:1]}, not the before/after result")
    return problems


def check_screenshot(png: Path) -> list[str]:
    """Problems with the picture: the chosen row must be visibly highlighted."""
    import matplotlib.image

    pixels = matplotlib.image.imread(str(png))[..., :3]
    if pixels.dtype.kind == "f":
        pixels = (pixels * 255).round()
    target = CHOSEN_RGB
    close = ((abs(pixels[..., 0] - target[0]) <= 3) & (abs(pixels[..., 1] - target[1]) <= 3)
             & (abs(pixels[..., 2] - target[2]) <= 3))
    count = int(close.sum())
    if count < MIN_CHOSEN_PIXELS:
        return [f"the screenshot shows {count} pixels of the chosen row's colour, fewer than {MIN_CHOSEN_PIXELS}: "
                "no chosen row is visible"]
    return []


def check_report(html: Path, screenshot: Path, *, browser: str) -> list[str]:
    url = html.resolve().as_uri()
    shot = _chromium(browser, "--window-size=1200,4000", "--hide-scrollbars", f"--screenshot={screenshot}", url)
    if shot.returncode != 0 or not screenshot.is_file():
        return [f"Chromium could not take a screenshot (exit {shot.returncode}): {shot.stderr[-500:]}"]
    dom = _chromium(browser, "--dump-dom", url)
    if dom.returncode != 0 or "<table" not in dom.stdout:
        return [f"Chromium could not render the page (exit {dom.returncode}): {dom.stderr[-500:]}"]
    return check_dom(dom.stdout) + check_screenshot(screenshot)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path, help="a report.html (dspy-icl-opt report RUN_DIR --format html)")
    parser.add_argument("--screenshot", type=Path, help="where to write the PNG (default: beside the page)")
    args = parser.parse_args(argv)
    browser = find_browser()
    if browser is None:
        print(f"error: no Chromium found (looked for {', '.join(BROWSERS)}); apt-get install -y chromium",
              file=sys.stderr)
        return 2
    screenshot = args.screenshot or args.html.with_suffix(".png")
    problems = check_report(args.html, screenshot, browser=browser)
    for problem in problems:
        print(f"FAIL: {problem}")
    if not problems:
        print(f"ok: val column, one chosen row drawn highlighted, result first; screenshot {screenshot}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
