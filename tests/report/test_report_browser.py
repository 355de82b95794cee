"""report.html as a person sees it: headless Chromium renders it without errors, shows every
plot and one table row per variant, and takes a screenshot."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess

import pytest
from _report_results import ROWS

from edgeopt.report import write_report

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no chromium on PATH (Debian: apt-get install chromium; "
                                                        ".ci/run installs it)")

# Appended to a copy of the report: collects script errors and console errors from the start,
# and after the load event writes what it saw into <pre id="edgeopt-check"> for --dump-dom.
_PROBE_HEAD = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || e)));
const _ce = console.error; console.error = (...a) => { window.__errors.push(a.join(' ')); _ce(...a); };
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const out = {errors: window.__errors, images: imgs.length,
               loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
               shown: imgs.filter(i => i.getBoundingClientRect().width > 100).length,
               rows: document.querySelectorAll('table tbody tr').length,
               cells: [...document.querySelectorAll('table tbody tr')].map(r => r.cells.length),
               headers: document.querySelectorAll('table thead th').length,
               chosen: [...document.querySelectorAll('tr.chosen td:first-child')].map(t => t.textContent),
               h2: [...document.querySelectorAll('h2')].map(h => h.textContent),
               recipe_open: [...document.querySelectorAll('details')].map(d => d.open),
               // self-contained: nothing fetched besides the page itself
               fetched: performance.getEntriesByType('resource').map(r => r.name)};
  const pre = document.createElement('pre'); pre.id = 'edgeopt-check';
  pre.textContent = JSON.stringify(out); document.body.appendChild(pre);
});
</script>"""


def _chromium(*args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--virtual-time-budget=5000", *args], check=False, capture_output=True, text=True,
                          timeout=timeout)


def _probe(page: str, tmp_path) -> dict:
    """What the probe script saw after loading ``page`` (a copy with the probe in its head)."""
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("<head>", "<head>" + _PROBE_HEAD, 1))
    dom = _chromium("--dump-dom", probe.as_uri())
    m = re.search(r'<pre id="edgeopt-check">(.*?)</pre>', dom.stdout, re.DOTALL)
    assert m, dom.stderr[-2000:]
    return json.loads(html.unescape(m.group(1)))


def test_the_probe_sees_a_script_error_and_a_broken_image(tmp_path):
    # the checks below would pass on a page they cannot see into; this one must fail them
    seen = _probe("<!doctype html><html><head></head><body><img src='data:image/png;base64,AAAA'>"
                  "<script>console.error('boom'); undefinedFn();</script></body></html>", tmp_path)
    assert seen["images"] == 1 and seen["loaded"] == 0
    assert seen["errors"][0] == "boom" and "undefinedFn" in seen["errors"][1]


def test_report_html_renders_every_plot_and_row_without_errors(tmp_path, results):
    write_report(results, tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert "<script" not in page  # the report itself runs no code
    seen = _probe(page, tmp_path)
    assert seen["errors"] == []
    assert seen["rows"] == len(ROWS) == len(results["variants"])
    # the two Pareto plots: every image decoded and laid out at a readable width
    assert seen["images"] == 2 and seen["loaded"] == 2 and seen["shown"] == 2
    assert seen["chosen"] == ["int8 ✓"]
    assert set(seen["cells"]) == {seen["headers"]} and seen["headers"] >= 18  # no ragged row
    assert seen["h2"] == ["Choice"] and seen["recipe_open"] == [False]  # the recipe starts collapsed
    assert seen["fetched"] == []

    shot = tmp_path / "report.png"
    run = _chromium("--enable-logging=stderr", "--v=0", f"--screenshot={shot}", "--window-size=1280,2000",
                    (tmp_path / "report.html").as_uri())
    assert shot.is_file(), run.stderr[-2000:]
    # Chromium logs a page's console messages and uncaught errors as "CONSOLE(...)" lines
    assert [ln for ln in run.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln] == []
    from PIL import Image

    img = Image.open(shot).convert("L")
    assert img.size == (1280, 2000)
    # not a blank page: the table and the plots put many distinct grey levels on the screen
    assert len(img.getcolors(256) or []) > 50
