from __future__ import annotations

import datetime as dt

from edgeopt.evaluate import machine_info


def test_machine_info_has_the_keys():
    info = machine_info()
    for key in ("cpu", "physical_cores", "logical_cores", "available_cores", "ram_gb", "os", "python",
                "torch", "torchvision", "onnx", "onnxruntime", "torch_threads", "gpu", "timestamp", "edgeopt"):
        assert key in info, key
    assert isinstance(info["cpu"], str) and info["cpu"]
    assert info["logical_cores"] >= 1 and info["ram_gb"] > 0
    assert info["torch"] and info["onnxruntime"]
    assert dt.datetime.fromisoformat(info["timestamp"]).tzinfo is not None
    import json

    json.dumps(info)  # plain JSON values only
