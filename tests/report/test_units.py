"""Units are honest: file sizes in MB of 10**6 bytes, memory in MiB of 2**20 bytes."""

from __future__ import annotations

from edgeopt.report import render_markdown, variant_rows


def _results():
    v = {"name": "fp32 onnx", "runtime": "onnxruntime",
         "size": {"bytes": 2_500_000, "gzip_bytes": 1_000_000, "params": 1, "nonzero_params": 1},
         "memory": {"peak_rss_mb": 64.0, "baseline_mb": 60.0, "delta_mb": 4.0}}
    return {"schema_version": 1, "edgeopt_version": "0", "run": "units", "created": "2026-01-01",
            "machine": {}, "config": {}, "variants": [v]}


def test_sizes_are_mb_of_10_6_bytes_and_memory_is_mib():
    headers, rows = variant_rows(_results())
    cell = dict(zip(headers, rows[0]))
    assert cell["size MB"] == "2.500" and cell["gzip MB"] == "1.000"  # 2,500,000 bytes, not 2.384 MiB
    assert cell["peak MiB"] == "64.0" and "peak MB" not in headers
    # the runtime's own baseline apart from the model's share (issue 12: torch alone is ~700 MiB)
    assert (cell["runtime MiB"], cell["model MiB"]) == ("60.0", "4.0")
    compact, _ = variant_rows(_results(), compact=True)
    assert "size MB" in compact and "model MiB" in compact
    md = render_markdown(_results())
    assert "MB of 10^6 bytes" in md and "peak MiB" in md
