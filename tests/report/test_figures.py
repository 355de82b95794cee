"""results["figures"]: extra PNGs listed in report.md and embedded in report.html."""

from __future__ import annotations

import base64
import re
import struct
import zlib

import pytest

from edgeopt.errors import ArtifactError
from edgeopt.evaluate.results import new_variant, validate_results
from edgeopt.report.markdown import render_markdown, write_report


def _tiny_png(gray: int) -> bytes:
    """A valid 1x1 8-bit grayscale PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes([0, gray])))
            + chunk(b"IEND", b""))


def _results(figures):
    return {
        "schema_version": 1, "edgeopt_version": "0", "run": "figs", "created": "2026-01-01",
        "machine": {}, "config": {}, "variants": [new_variant("fp32 torch", runtime="torch")],
        "figures": figures,
    }


FIGURES = [
    {"title": "int8 weights", "path": "quant/weights.png", "caption": "per-channel scales"},
    {"title": "int8 activations", "path": "quant/acts.png"},
    {"title": "sensitivity", "path": "quant/sensitivity.png", "caption": "not written"},
]


def test_report_lists_and_embeds_figures(tmp_path):
    pngs = {"quant/weights.png": _tiny_png(10), "quant/acts.png": _tiny_png(200)}
    for rel, data in pngs.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    results = validate_results(_results(FIGURES))

    md = write_report(results, tmp_path).read_text()
    figs = md[md.index("## Figures"):]
    assert "![int8 weights](quant/weights.png)" in figs
    assert "*int8 weights.* per-channel scales" in figs
    assert "![int8 activations](quant/acts.png)" in figs
    assert "(figure missing: quant/sensitivity.png)" in figs
    assert "![sensitivity]" not in figs

    page = (tmp_path / "report.html").read_text()
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert [base64.b64decode(e) for e in embedded] == list(pngs.values())  # in the listed order
    assert "(figure missing: quant/sensitivity.png)" in page
    assert "<figcaption><b>int8 weights.</b> per-channel scales</figcaption>" in page
    assert "quant/weights.png" not in page  # self-contained: no link to the file


def test_not_a_png_counts_as_missing_and_no_figures_no_section(tmp_path):
    (tmp_path / "fake.png").write_text("not a png")
    md = render_markdown(_results([{"title": "f", "path": "fake.png"}]), base_dir=tmp_path)
    assert "(figure missing: fake.png)" in md
    assert "## Figures" not in render_markdown(_results([]), base_dir=tmp_path)


def test_results_schema_accepts_figures_and_rejects_bad_ones():
    validate_results(_results(FIGURES))
    r = _results(None)
    del r["figures"]
    validate_results(r)  # optional
    with pytest.raises(ArtifactError, match=r"figures\[0\]"):
        validate_results(_results([{"title": "no path"}]))
    with pytest.raises(ArtifactError, match="must be a list"):
        validate_results(_results("weights.png"))
