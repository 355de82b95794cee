"""The docstring examples of edgeopt.distill run and give what they show."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["edgeopt.distill", "edgeopt.distill._base", "edgeopt.distill._run", "edgeopt.distill.config",
           "edgeopt.distill.features", "edgeopt.distill.losses", "edgeopt.distill.methods",
           "edgeopt.distill.sweep", "edgeopt.distill.teacher", "edgeopt.distill.presets",
           "edgeopt.distill.jobs"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
