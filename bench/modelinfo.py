"""What ``bench models`` lists: params and FLOPs of every registered model at its default input."""

from __future__ import annotations

from typing import Any

__all__ = ["model_info", "model_table"]


def model_info(name: str, count: bool = True) -> dict[str, Any]:
    import models

    from .flops import count_step_flops

    spec = models.get_spec(name)
    model = spec.builder().eval()
    info: dict[str, Any] = {
        "name": name, "family": spec.family, "task": spec.task, "input_shape": list(spec.input_shape),
        "params": sum(p.numel() for p in model.parameters()), "hot_paths": list(spec.hot_paths),
        "torchvision": spec.torchvision, "gflops": None, "gmacs": None, "flops_counter_warnings": "",
    }
    if count:
        batch = spec.make_batch(1)
        fc = count_step_flops(lambda: spec.forward(model, batch), model, batch.inputs)
        info["gflops"] = fc.flops / 1e9
        info["gmacs"] = fc.macs / 1e9 if fc.macs is not None else None
        info["flops_counter_warnings"] = fc.warnings
    return info


def model_table(count: bool = True) -> list[dict[str, Any]]:
    import models

    return [model_info(n, count) for n in models.list_models()]
