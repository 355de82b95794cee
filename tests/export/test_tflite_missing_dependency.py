"""Without litert-torch, TFLite export and the litert runtime fail with one line and the pip command.

Runs in every environment: the packages are hidden with ``sys.modules[name] = None``.
"""

from __future__ import annotations

import sys

import pytest

from edgeopt.errors import MissingDependencyError

PIP = 'pip install "edgeopt[tflite]"'


@pytest.fixture
def no_litert(monkeypatch):
    for mod in ("litert_torch", "ai_edge_litert", "ai_edge_litert.interpreter"):
        monkeypatch.setitem(sys.modules, mod, None)


def test_export_without_litert_torch_names_the_extra(no_litert, tiny_model, tmp_path):
    from edgeopt.export import export_model

    with pytest.raises(MissingDependencyError) as err:
        export_model(tiny_model, "tflite", tmp_path / "m.tflite")
    assert err.value.one_line().startswith("MissingDependencyError: TFLite export needs the 'tflite' extra: " + PIP)
    assert not list(tmp_path.iterdir())


def test_litert_runner_without_ai_edge_litert_names_the_extra(no_litert, tmp_path, digits_data):
    from edgeopt.artifact import Artifact
    from edgeopt.runtime import get_runner

    p = tmp_path / "m.tflite"
    p.write_bytes(b"\x00" * 4 + b"TFL3" + b"\x00" * 8)
    Artifact(p, "tflite", digits_data.spec).save_sidecar()
    with pytest.raises(MissingDependencyError, match=r"the litert runtime needs the 'tflite' extra: pip install \"edgeopt\[tflite\]\""):
        get_runner(p)


def test_tflite_format_and_runtime_are_registered():
    from edgeopt.artifact import DEFAULT_RUNTIME, FORMATS
    from edgeopt.export import EXPORTERS, list_formats
    from edgeopt.runtime import list_runtimes

    assert "tflite" in list_formats() and "litert" in list_runtimes()
    assert FORMATS[".tflite"] == "tflite" and DEFAULT_RUNTIME["tflite"] == "litert"
    reason = EXPORTERS.get("tflite").available()
    assert reason is None or PIP in reason
