"""The accuracy gate (bench/accuracy.py): rows that compute something else than the float64 model are flagged
``inaccurate``, keep their timing, fail the sweep's exit code and show as regressions in ``compare``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn

from bench import accuracy
from bench.cli import main
from bench.config import Config
from bench.io import read_results
from bench.runner import RunOptions, measure
from kernels.registry import KernelSpec, get_kernel, register_kernel, unregister_kernel
from models.registry import register_model, unregister_model

OPTS = RunOptions(warmup_s=0.0, min_time_s=0.01, min_samples=2, count_flops=False, threads=1)
FAST = ["--min-time-s", "0.01", "--warmup-s", "0", "--no-progress", "--no-flops", "--threads", "1"]


def _attention_ignoring_the_mask(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                                 mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """A wrong window attention (pure PyTorch): the shifted windows' mask is dropped, everything else is right."""
    from models.swin import window_attention_eager

    return window_attention_eager(q, k, v, bias, None, scale)


@pytest.fixture
def nomask_kernel() -> Any:
    """``window_attention_nomask``: a kernel registered as a test double, switched in by ``--backends triton``."""
    real = get_kernel("window_attention")

    def patch(model: nn.Module) -> int:
        sites = [m for m in model.modules() if getattr(m, "hot_path", None) == "window_attention"]
        for m in sites:
            m.attn_fn = _attention_ignoring_the_mask
        return len(sites)

    fields = {f: getattr(real, f) for f in real.__dataclass_fields__}
    register_kernel(KernelSpec(**{**fields, "name": "window_attention_nomask", "patch_model": patch}))
    yield
    unregister_kernel("window_attention_nomask")


def test_a_kernel_that_drops_the_mask_is_inaccurate_and_eager_is_ok(nomask_kernel: None) -> None:
    accuracy.clear_cache()
    eager, _ = measure(Config("swin_t", "eager", "infer", "cpu", "fp32", 1, input_size=32), OPTS)
    wrong, _ = measure(Config("swin_t", "triton", "infer", "cpu", "fp32", 1, kernels="window_attention_nomask",
                              input_size=32), OPTS)
    assert eager["status"] == "ok" and eager["acc_status"] == "ok", eager["error"]
    assert eager["acc_rel_fro"] < 1e-5  # fp32 eager against float64: rounding only
    assert wrong["status"] == "inaccurate" and wrong["acc_status"] == "inaccurate"
    assert wrong["acc_rel_fro"] > accuracy.tolerance(Config("swin_t", "triton", "infer", "cpu", "fp32", 1)).rel_fro
    assert wrong["latency_ms_p50"] > 0 and wrong["n_samples"] >= 2  # the timing is kept, flagged
    assert "logits: rel_fro" in wrong["error"]


def test_fp32_rows_infer_and_train_are_within_fp32_error() -> None:
    for mode in ("infer", "train"):
        row, _ = measure(Config("basic_cnn", "eager", mode, "cpu", "fp32", 2), OPTS)
        assert row["status"] == "ok" and row["acc_status"] == "ok", (mode, row["error"], row.get("acc_note"))
        assert row["acc_rel_fro"] < 1e-5 and row["acc_max_abs"] < 1e-4
        if mode == "train":
            assert row["acc_grad_rel"] < 1e-5
            assert row["acc_loss"] == pytest.approx(row["acc_loss_ref"], rel=1e-5)
        else:
            assert row["acc_cos"] > 1 - 1e-9


class _CorruptGrad(nn.Module):
    """A small net whose ``fc1.weight`` gradient is tripled in float32 (a wrong backward kernel), right in float64."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(12, 16), nn.Linear(16, 4)
        self.fc1.weight.register_hook(lambda g: g * 3 if g.dtype == torch.float32 else g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


@pytest.fixture
def corrupt_model() -> Any:
    def fake_corrupt_grad(**_: Any) -> nn.Module:
        return _CorruptGrad()

    register_model(family="fake", input_shape=(3, 2, 2), num_classes=4)(fake_corrupt_grad)
    yield "fake_corrupt_grad"
    unregister_model("fake_corrupt_grad")


def test_a_train_row_with_a_corrupted_gradient_is_inaccurate(corrupt_model: str) -> None:
    infer, _ = measure(Config(corrupt_model, "eager", "infer", "cpu", "fp32", 2), OPTS)
    train, _ = measure(Config(corrupt_model, "eager", "train", "cpu", "fp32", 2), OPTS)
    assert infer["status"] == "ok"  # the forward is right
    assert train["status"] == "inaccurate" and train["acc_rel_fro"] < 1e-6  # loss right, gradient wrong
    assert train["acc_grad_rel"] > 0.5 and train["acc_grad_worst"].startswith("fc1.weight=")
    assert "grads: rel" in train["error"]


def test_sweep_exit_code_report_and_compare_flag_ok_to_inaccurate(tmp_path: Path, corrupt_model: str,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    base, new = tmp_path / "base", tmp_path / "new"
    common = ["run", "--models", corrupt_model, "--modes", "train", "--devices", "cpu", *FAST]
    assert main([*common, "--out", str(base), "--no-accuracy"]) == 0  # the gate off: as before, an ok row
    assert main([*common, "--out", str(new)]) == 1  # inaccurate fails the run like an error
    assert read_results(base / "results.csv")["acc_status"].isna().all()
    row = read_results(new / "results.csv").iloc[0]
    assert row["status"] == "inaccurate" and float(row["latency_ms_p50"]) > 0
    report = (new / "report.md").read_text()
    assert "**inaccurate**" in report and "—" not in report.split("**inaccurate**")[0].splitlines()[-1]
    capsys.readouterr()
    rc = main(["compare", str(base), str(new), "--fail-on-regression"])
    out = capsys.readouterr().out
    assert rc == 1 and "ok → inaccurate" in out


def test_compare_outputs_and_grad_error_formulas() -> None:
    r = {"a": torch.tensor([3.0, 4.0], dtype=torch.float64), "s": torch.tensor(2.0, dtype=torch.float64)}
    m = accuracy.compare_outputs({"a": torch.tensor([3.0, 4.5]), "s": torch.tensor(2.0)}, r)
    assert m["rel_fro"] == pytest.approx(0.1) and m["max_abs"] == pytest.approx(0.5) and m["worst"] == "a"
    assert m["cos"] == pytest.approx((9 + 18) / (5 * (9 + 4.5**2) ** 0.5))  # scalars take no part in cos
    bad = accuracy.compare_outputs({"a": torch.tensor([float("nan"), 4.0]), "s": torch.tensor(2.0)}, r)
    assert bad["nonfinite"] == ["a"]
    # norm-weighted: sqrt(sum |g - r|^2 / sum |r|^2); a missing gradient counts as zero
    rel, worst, nonfinite = accuracy.grad_error({"w": torch.tensor([3.0, 4.0]), "b": None},
                                                {"w": torch.tensor([3.0, 4.0]), "b": torch.tensor([0.0, 1.0])})
    assert rel == pytest.approx((1 / 26) ** 0.5) and worst == "b=1" and nonfinite == []
    with pytest.raises(ValueError, match="compared tensors differ"):
        accuracy.compare_outputs({"a": r["a"]}, r)


def test_a_compile_row_on_the_cpu_passes(corrupt_model: str) -> None:
    """Inductor on the CPU (a one-layer-pair net: compiling basic_cnn costs ~1 min of CI; the check's path is the
    same); the accuracy check calls the compiled module itself."""
    row, _ = measure(Config(corrupt_model, "compile", "infer", "cpu", "fp32", 2), OPTS)
    assert row["status"] == "ok", row["error"]
    assert row["acc_status"] == "ok" and row["acc_rel_fro"] < 1e-5


class _TripledUnderCompile(torch.autograd.Function):
    """Identity whose backward triples the gradient when traced by torch.compile (a wrong compiled backward), and is
    right when run eagerly."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x * 1.0

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        return g * 3 if torch.compiler.is_compiling() else g


class _Twolayer(nn.Module):
    def __init__(self, wrong: bool) -> None:
        super().__init__()
        self.fc1, self.fc2, self.wrong = nn.Linear(12, 16), nn.Linear(16, 4), wrong

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x.flatten(1))
        return self.fc2(torch.relu(_TripledUnderCompile.apply(h) if self.wrong else h))


@pytest.fixture
def compiled_grad_models() -> Any:
    names = {"fake_compiled_grad_ok": False, "fake_compiled_grad_wrong": True}
    for name, wrong in names.items():
        def build(wrong: bool = wrong, **_: Any) -> nn.Module:
            return _Twolayer(wrong)

        build.__name__ = name
        register_model(family="fake", input_shape=(3, 2, 2), num_classes=4)(build)
    yield list(names)
    for name in names:
        unregister_model(name)


def test_low_precision_gradients_of_a_compiled_row_are_gated_against_eager(compiled_grad_models: list[str]) -> None:
    """bf16 gradients have no absolute bound (eager's own error can be ~1 at init); a compiled row's are held to
    3 x eager bf16's error + 0.01, both against float64: a compiled backward that triples one gradient fails."""
    ok_model, wrong_model = compiled_grad_models
    opts = RunOptions(warmup_s=0.0, min_time_s=0.01, min_samples=2, count_flops=False, threads=1,
                      allow_slow_fallback=True)
    eager, _ = measure(Config(wrong_model, "eager", "train", "cpu", "bf16", 2), opts)
    assert eager["status"] == "ok" and "grad_rel not gated" in eager["acc_tol"] and not eager.get("acc_grad_eager")
    good, _ = measure(Config(ok_model, "compile", "train", "cpu", "bf16", 2, compile_mode="default"), opts)
    assert good["status"] == "ok", good.get("acc_note")
    assert good["acc_grad_rel"] <= 3 * good["acc_grad_eager"] + 0.01 and "3*eager" in good["acc_tol"]
    bad, _ = measure(Config(wrong_model, "compile", "train", "cpu", "bf16", 2, compile_mode="default"), opts)
    assert bad["status"] == "inaccurate" and "x eager bf16's" in bad["error"]
    assert bad["acc_grad_rel"] > 3 * bad["acc_grad_eager"] + 0.01 and bad["acc_rel_fro"] < 0.1  # the loss is right
