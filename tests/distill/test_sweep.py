"""The temperature x alpha sweep trains every cell, shares the teacher cache, and writes
its CSV, JSON and heatmap PNG."""

from __future__ import annotations

import csv
import json
import math

import pytest

from edgeopt.distill import DistillConfig, sweep
from edgeopt.distill.sweep import COLUMNS
from edgeopt.errors import ConfigError


def test_sweep_trains_the_grid_and_writes_csv_json_and_heatmap(make_student, teacher, digits_data, tmp_path):
    cfg = DistillConfig(epochs=2, batch_size=64, lr=0.05)
    r = sweep(make_student(), teacher, cfg, digits_data, temperatures=[1.0, 4.0], alphas=[0.5, 0.9],
              out_dir=tmp_path / "sw")
    assert [(row["temperature"], row["alpha"]) for row in r.rows] == [(1.0, 0.5), (1.0, 0.9), (4.0, 0.5), (4.0, 0.9)]
    assert all(row["student_mean"] > 0.5 for row in r.rows)
    b = r.baseline["mean"]
    assert b > 0.5 and all(row["gain"] == pytest.approx(row["student_mean"] - b) for row in r.rows)
    assert all(row["verdict"] in ("gain", "loss", "no measurable gain") for row in r.rows)
    assert r.best["student_mean"] == max(row["student_mean"] for row in r.rows)
    assert r.grid()[1][0] == r.rows[2]["student_mean"]
    # one teacher copy and cache for the whole grid: the teacher ran once per image
    assert r.info == {"teacher_cache": "on", "teacher_forwards": math.ceil(1295 / 64)}

    with open(r.paths["csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == COLUMNS and len(rows) == 4
    assert float(rows[3]["temperature"]) == 4.0 and float(rows[3]["alpha"]) == 0.9
    assert float(rows[3]["student_mean"]) == pytest.approx(r.rows[3]["student_mean"], abs=1e-6)
    saved = json.loads(r.paths["json"].read_text())
    assert len(saved["rows"]) == 4 and saved["baseline"]["mean"] == pytest.approx(b)
    png = r.paths["heatmap"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert sorted(p.name for p in (tmp_path / "sw").iterdir()) == ["sweep.csv", "sweep.json", "sweep_heatmap.png"]


def test_sweep_refuses_bad_axes_and_other_methods(make_student, teacher, digits_data):
    with pytest.raises(ConfigError, match="at least one temperature"):
        sweep(make_student(), teacher, DistillConfig(), digits_data, temperatures=[], alphas=[0.5])
    with pytest.raises(ConfigError, match=r"alpha=1.5 must be in \[0.0, 1.0\]"):
        sweep(make_student(), teacher, DistillConfig(), digits_data, temperatures=[4.0], alphas=[1.5])
    with pytest.raises(ConfigError, match="sweep grids response KD"):
        sweep(make_student(), teacher, DistillConfig(method="dkd"), digits_data, temperatures=[4.0], alphas=[0.5])
