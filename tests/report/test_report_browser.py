"""report.html as a person sees it: headless Chromium renders it without errors, shows every
plot and one table row per variant, and takes a screenshot."""

from __future__ import annotations

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
               chosen: [...document.querySelectorAll('tr.chosen td:first-child')].map(t => t.textContent)};
  const pre = document.createElement('pre'); pre.id = 'edgeopt-check';
  pre.textContent = JSON.stringify(out); document.body.appendChild(pre);
});
</script>"""


def _chromium(*args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--virtual-time-budget=5000", *args], capture_output=True, text=True, timeout=timeout)


def test_report_html_renders_every_plot_and_row_without_errors(tmp_path, results):
    write_report(results, tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert "<script" not in page  # the report itself runs no code
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("<head>", "<head>" + _PROBE_HEAD, 1))
    dom = _chromium("--dump-dom", probe.as_uri())
    m = re.search(r'<pre id="edgeopt-check">(.*?)</pre>', dom.stdout, re.S)
    assert m, dom.stderr[-2000:]
    seen = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert seen["errors"] == []
    assert seen["rows"] == len(ROWS) == len(results["variants"])
    # the two Pareto plots: every image decoded and laid out at a readable width
    assert seen["images"] == 2 and seen["loaded"] == 2 and seen["shown"] == 2
    assert seen["chosen"] == ["int8 ✓"]

    shot = tmp_path / "report.png"
    run = _chromium(f"--screenshot={shot}", "--window-size=1280,2000", (tmp_path / "report.html").as_uri())
    assert shot.is_file(), run.stderr[-2000:]
    from PIL import Image

    img = Image.open(shot).convert("L")
    assert img.size == (1280, 2000)
    # not a blank page: the table and the plots put many distinct grey levels on the screen
    assert len(img.getcolors(256) or []) > 50
