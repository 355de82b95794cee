"""Fixtures of the report tests."""

from __future__ import annotations

import pytest
from _report_results import make_results


@pytest.fixture
def results():
    return make_results()
