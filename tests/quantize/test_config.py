"""QuantConfig refuses wrong types when built directly, as from_dict does from YAML/JSON."""

from __future__ import annotations

import pytest

from edgeopt.errors import ConfigError
from edgeopt.quantize import QuantConfig


@pytest.mark.parametrize(("changes", "message"), [
    ({"per_channel": "no"}, "per_channel must be true or false, got 'no'"),  # a truthy string
    ({"reduce_range": "false"}, "reduce_range must be true or false"),
    ({"calibration_samples": "512"}, "calibration_samples must be an integer"),
    ({"qat_lr": True}, "qat_lr must be a number"),
    ({"keep_float": "fc"}, "keep_float must be a list, got 'fc'"),
    ({"method": "int4"}, "must be one of static, dynamic, qat"),
    ({"max_drop": -1.0}, r"max_drop=-1.0 must be in \[0, 100\] accuracy points"),  # was accepted
    ({"qat_batch_size": 10**9}, r"qat_batch_size=1000000000 must be in \[1, 1048576\]"),
])
def test_wrong_types_are_one_line_config_errors(changes, message):
    with pytest.raises(ConfigError, match=message) as e:
        QuantConfig(**changes)
    assert "\n" not in str(e.value)


def test_lists_become_tuples_and_ints_floats():
    cfg = QuantConfig(keep_float=["features.0"], percentile=99, max_drop=1)
    assert cfg.keep_float == ("features.0",) and cfg.percentile == 99.0 and isinstance(cfg.max_drop, float)
    assert QuantConfig.from_dict(cfg.to_dict()) == cfg
