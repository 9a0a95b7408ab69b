"""``compare``'s environment diff includes the machine's load, as env.json records it and the README promises."""

from __future__ import annotations

from bench.compare import env_diff

ENV = {"cpu_model": "Test CPU", "threads": 2, "torch_version": "2.14.1", "host": "h", "cpu_count": 2}


def test_a_busier_machine_is_a_material_difference() -> None:
    quiet, busy = {**ENV, "load_avg": [0.3, 0.4, 0.5]}, {**ENV, "load_avg": [1.9, 1.2, 0.8]}
    diff = {d["field"]: d for d in env_diff(quiet, busy)}
    assert diff == {"load (1-min avg per core)": {"field": "load (1-min avg per core)", "base": 0.15, "new": 0.95,
                                                  "material": True}}


def test_ordinary_load_fluctuation_is_not_listed() -> None:
    a, b = {**ENV, "load_avg": [1.49, 1.6, 2.2]}, {**ENV, "load_avg": [1.59, 1.6, 2.2]}  # results/cpu-repeat's runs
    assert env_diff(a, b) == []
    older = dict(ENV)  # env.json written before the load was recorded: listed, not material
    assert env_diff(older, b) == [{"field": "load (1-min avg per core)", "base": None, "new": 0.8, "material": False}]
