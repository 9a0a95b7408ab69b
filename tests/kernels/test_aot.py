"""The ahead-of-time compile check (``bench kernels --compile``): real Triton compilation for a GPU on this CPU.

The check drives Triton's JIT, which ``TRITON_INTERPRET=1`` (set for this test process) replaces, so everything
that compiles runs in a subprocess with the interpreter off. The checker is tested on toy kernels with known
outcomes (one compiles, one the compiler refuses, one needs more shared memory than a block may have), then every
registered kernel is recorded and compiled for sm_90 at one real shape per kernel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench.kernelbench.aot import ARCHS, occupancy
from bench.kernelbench.cli import run as kernels_cli
from kernels._triton import HAS_TRITON, emulate_gpu
from kernels.registry import get_kernel, list_kernels

REPO = Path(__file__).resolve().parents[2]
SPILL_CHECKED_TRITONS = ("3.6.0", "3.8.0")  # the Tritons results/aot-* were compiled with
pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="needs triton")


def _no_interp_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _script_lines(script: str, timeout: int) -> list[str]:
    """Run ``script`` in a fresh interpreter without ``TRITON_INTERPRET`` (as the ahead-of-time tools need); its
    stdout lines."""
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=_no_interp_env(), capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()


def _probe(arch: str) -> dict:
    proc = subprocess.run([sys.executable, str(REPO / "tests/kernels/aot_probe.py"), arch], cwd=REPO,
                          env=_no_interp_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("regs", "smem", "warps", "blocks", "occ"), [
    (10, 0, 4, 16, 100.0),          # warps limit: 64 / 4
    (128, 0, 4, 4, 25.0),           # 128 regs x 128 threads = 16K per block -> 4 blocks
    (255, 0, 8, 1, 12.5),           # 255 -> 256 per thread (8-register granules): 64K for one 8-warp block
    (256, 0, 4, 0, 0.0),            # over 255 registers per thread: cannot launch
    (32, 100 * 1024, 4, 2, 12.5),   # shared memory: 228 KB / (100 KB + 1 KB reserved)
    (32, 232449, 4, 0, 0.0),        # one byte over the 227 KB per-block maximum
])
def test_occupancy_follows_the_sm90_limits(regs: int, smem: int, warps: int, blocks: int, occ: float) -> None:
    assert occupancy(ARCHS["sm_90"], regs, smem, warps) == (blocks, occ)


def test_emulation_refuses_the_interpreter() -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1"
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"), emulate_gpu():
        pass


def test_checker_on_known_outcomes_sm90() -> None:
    out = _probe("sm_90")
    assert out["n_launches"] == 5  # recorded, none run
    rows = out["rows"]
    ok = rows["copy_kernel:-"]
    assert ok["status"] == "ok" and ok["regs"] > 0 and ok["num_warps"] == 4 and ok["occupancy_pct"] > 0
    bad = rows["not_pow2_kernel:-"]
    assert bad["status"] == "compile_error" and "power of 2" in bad["message"]
    fits = rows["smem_hog_kernel:2"]
    assert fits["status"] == "ok" and 128 * 1024 <= fits["smem_bytes"] <= ARCHS["sm_90"].smem_per_block
    hog = rows["smem_hog_kernel:5"]  # five stages of two 32 KB tiles
    assert hog["status"] == "too_many_resources" and hog["smem_bytes"] > ARCHS["sm_90"].smem_per_block
    assert f"> {ARCHS['sm_90'].smem_per_block} B per block" in hog["message"] and hog["blocks_per_sm"] == 0
    odd = rows["copy_kernel:bad_arg"]  # the binder's own refusal becomes a row, not a traceback
    assert odd["status"] == "error" and "specializing as the JIT would failed" in odd["message"]


def test_checker_uses_the_target_limits_sm89() -> None:
    # Compiled for sm_89 (no wgmma) and judged against an sm_89 block's 99 KB, not an H100's 227 KB.
    rows = _probe("sm_89")["rows"]
    assert rows["copy_kernel:-"]["status"] == "ok"
    assert rows["smem_hog_kernel:2"]["status"] == "ok"
    hog = rows["smem_hog_kernel:5"]
    assert hog["status"] == "too_many_resources" and f"> {ARCHS['sm_89'].smem_per_block} B" in hog["message"]


def _first_real_shapes() -> list[str]:
    return [next(iter(get_kernel(k).shapes)) for k in list_kernels()]


def test_every_registered_kernel_compiles_for_sm90(tmp_path: Path) -> None:
    """Record each kernel's launches at one real shape (GPU launch choices), compile them for sm_90."""
    shapes = _first_real_shapes()
    proc = subprocess.run([sys.executable, "-m", "bench", "kernels", "--compile", "--arch", "sm_90", "--shapes",
                           *shapes, "--dtypes", "bf16", "fp32", "--out", str(tmp_path)], cwd=REPO,
                          env=_no_interp_env(), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    df = pd.read_csv(tmp_path / "kernels_compile.csv")
    assert set(df["kernel"]) == set(list_kernels())
    assert (df["status"] == "ok").all(), df[df["status"] != "ok"][["kernel", "triton_kernel", "message"]]
    for (kernel, direction), g in df.groupby(["kernel", "direction"]):
        assert len(g) >= 1 and (g["regs"] > 0).all() and (g["regs"] <= 255).all(), (kernel, direction)
        assert (g["occupancy_pct"] > 0).all() and (g["programs"] > 0).all()
    assert set(df["direction"]) == {"forward", "backward"}
    # GPU launch choices, not the interpreter's: bf16 dots stay bf16, no interpreter rounding workaround.
    wa = df[(df["kernel"] == "window_attention") & (df["dtype"] == "bf16")]
    assert wa["constexprs"].map(lambda s: json.loads(s).get("DOT_F32") in (False, None)).all()
    ra = df[df["kernel"] == "roi_align"]
    assert ra["constexprs"].map(lambda s: json.loads(s).get("INTERPRET") in (False, None)).all()
    # Register pressure guard (Triton's compiler output, not timing): Swin stage 1 attention spills in no direction.
    # Register allocation is the compiler's: the guard holds for the Tritons it was measured with (results/aot-*);
    # another Triton/ptxas may allocate differently, and then only the launch/fit checks above apply.
    if df["triton_version"].iloc[0] in SPILL_CHECKED_TRITONS:
        assert (wa["spill_store_bytes"] == 0).all()
        wa32 = df[(df["kernel"] == "window_attention") & (df["dtype"] == "fp32")]
        assert (wa32["spill_store_bytes"] == 0).all(), wa32[["direction", "regs", "spill_store_bytes"]]
    dw = df[(df["kernel"] == "depthwise_conv") & (df["dtype"] == "bf16")]
    assert dw["constexprs"].map(lambda s: json.loads(s).get("RTNE_BF16") in (False, None)).all()
    assert "Ahead-of-time compile for sm_90" in proc.stdout
    report = (tmp_path / "report.md").read_text()
    assert "### Ahead-of-time compile (`--compile`)" in report and "_wattn_fwd_kernel" in report


def test_fp64_window_attention_fits_an_sm89_block(tmp_path: Path) -> None:
    """Found by this check: the fp64 backward's 64-row tile needed 112 KB of shared memory, over the 99 KB an sm_89
    block (L4, L40S) may have, so ``--check`` in fp64 could not launch there; it now takes 32-row tiles."""
    proc = subprocess.run([sys.executable, "-m", "bench", "kernels", "--compile", "--arch", "sm_89", "--kernels",
                           "window_attention", "--shapes", "swin_t_stage1_b64_shifted", "--dtypes", "fp64", "--out",
                           str(tmp_path)], cwd=REPO, env=_no_interp_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    df = pd.read_csv(tmp_path / "kernels_compile.csv")
    assert set(df["triton_kernel"]) == {"_wattn_fwd_kernel", "_wattn_bwd_rows_kernel", "_wattn_bwd_cols_kernel"}
    assert (df["status"] == "ok").all() and (df["smem_bytes"] <= ARCHS["sm_89"].smem_per_block).all()


def _compile_models(out: Path, models: list[str], modes: list[str], extra: tuple[str, ...] = ()) -> pd.DataFrame:
    proc = subprocess.run([sys.executable, "-m", "bench", "kernels", "--compile", "--models", *models,
                           "--batch-sizes", "1", "--dtypes", "fp32", "--modes", *modes, *extra, "--out", str(out)],
                          cwd=REPO,
                          env=_no_interp_env(), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return pd.read_csv(out / "kernels_compile.csv")


def test_models_end_to_end_launches_compile_for_sm90(tmp_path: Path) -> None:
    """``--compile --models``: what ``run --backends triton`` launches inside each model, at the model's own input
    size, recorded through a real forward/backward on the CPU and compiled for sm_90. Each kernel end to end in its
    model: window attention (Swin-T) and ROI Align (Faster R-CNN) in inference and training, the depthwise conv
    (EfficientNet-B0, 16 layers) in inference, and a model without a hot path.

    What is left to ``nox -s compile`` / ``gpu_job --preflight`` (the full set), to keep this test's cold-cache time
    down (111-127 s of the CI run, about half of it compiling):
    * EfficientNet-B0's train step: its 48 backward launches are 25 more variants to compile (each layer's own
      shape); the depthwise backward kernels are compiled at a real shape by ``test_every_registered_kernel...``.
    * batch 2: the launch counts below do not depend on the batch, and batch 1 halves the CPU work of the models'
      own layers.
    * Faster R-CNN at 800x800: the first call runs at ``--input-size 224`` (Swin-T's and ResNet-18's own size), which
      cuts the CPU work of Faster R-CNN's own layers about 13-fold (its train step at 800 px was about 25 s of this
      test); the ROI Align launches are the same kernels with another box count and feature-map size, and the real
      size is compiled by ``gpu_job --preflight``.
    * bf16: the model's own layers run on the CPU around the recorded launches, and on a CPU without native bf16
      (AVX2) a bf16 Faster R-CNN train step takes minutes in PyTorch's fallback convolution (this test alone went
      past 20 minutes there). The bf16 launches of the real shapes are compiled by
      ``test_every_registered_kernel...``."""
    df = pd.concat([_compile_models(tmp_path / "both", ["swin_t", "fasterrcnn_resnet50_fpn", "resnet18"],
                                    ["infer", "train"], ("--input-size", "224")),
                    _compile_models(tmp_path / "infer", ["efficientnet_b0"], ["infer"])])
    per = df.groupby(["shape", "direction", "kernel", "triton_kernel"]).size().to_dict()
    assert per[("swin_t_b1_224px", "infer", "window_attention", "_wattn_fwd_kernel")] == 12  # one per Swin-T block
    assert per[("swin_t_b1_224px", "train", "window_attention", "_wattn_bwd_rows_kernel")] == 12
    assert per[("efficientnet_b0_b1", "infer", "depthwise_conv", "_dw_conv_planar_kernel")] == 16  # B0's dw convs
    frcnn = "fasterrcnn_resnet50_fpn_b1_224px"
    assert per[(frcnn, "infer", "roi_align", "_roi_align_fwd_kernel")] == 1  # all levels at once
    assert per[(frcnn, "train", "roi_align", "_roi_align_bwd_kernel")] == 1
    assert set(zip(df["shape"], df["direction"])) == {
        (f"{m}_b1_224px", d) for m in ("swin_t", "fasterrcnn_resnet50_fpn", "resnet18") for d in ("infer", "train")
    } | {("efficientnet_b0_b1", "infer")}
    ok = df[df["shape"] != "resnet18_b1_224px"]
    assert (ok["status"] == "ok").all(), ok[ok["status"] != "ok"][["shape", "message"]]
    assert set(df[df["shape"] == "resnet18_b1_224px"]["status"]) == {"unsupported"}  # no hot path


@pytest.mark.parametrize(("argv", "needle"), [
    (["--compile"], "TRITON_INTERPRET unset"),
    (["--compile", "--check"], "--compile runs alone"),
    (["--compile", "--arch", "sm_75"], "valid: sm_80, sm_89, sm_90"),
    (["--check", "--models", "swin_t"], "--models works with --compile"),
    (["--compile", "--models", "swin_tt"], "unknown model 'swin_tt'"),
    (["--compile", "--models", "swin_t", "--dtypes", "fp64"], "fp64 is a kernel-only dtype"),
    (["--compile", "--models", "swin_t", "--modes", "eval"], "unknown mode 'eval'"),
    (["--compile", "--input-size", "64"], "--input-size works with --compile --models"),
    (["--compile", "--models", "swin_t", "--input-size", "-8"], "--input-size must be a positive number"),
])
def test_compile_bad_input_exits_2(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert kernels_cli(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


def test_emulated_launch_parameters_are_the_gpu_ones() -> None:
    """Under emulation the depthwise launcher picks its CUDA tiles for CPU tensors (checked in a subprocess)."""
    script = (
        "import torch\n"
        "from kernels._triton import emulate_gpu, dispatch_path, sm_count\n"
        "from kernels.depthwise_conv.kernel import _planar_blocks\n"
        "cpu = torch.device('cpu')\n"
        "print(_planar_blocks(4096, 112, 112, cpu), dispatch_path(cpu), sm_count(cpu))\n"
        "with emulate_gpu(132):\n"
        "    print(_planar_blocks(4096, 112, 112, cpu), dispatch_path(cpu), sm_count(cpu))\n"
    )
    plain, emulated = _script_lines(script, timeout=300)
    assert plain.endswith("reference 1") and emulated.endswith("triton 132")
    assert emulated.startswith("(1, 8, 128)")  # GPU: 128-wide rows, ~1024 outputs per program
    assert plain.startswith("(4, 64, 64)")  # the interpreter's few big tiles


def test_fp32_eager_math_keeps_what_a_launch_sees() -> None:
    """The recording's half-precision stand-in (``_Fp32EagerMath``): each convolution / matrix product in bf16 is the
    fp32 result rounded to bf16 — same shape, dtype and strides (channels_last kept) as the native op — and other ops
    pass through untouched."""
    import torch
    import torch.nn.functional as F

    from bench.kernelbench.aot import _Fp32EagerMath

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 9, 7, generator=g).to(torch.bfloat16).to(memory_format=torch.channels_last)
    w = torch.randn(16, 8, 3, 3, generator=g).to(torch.bfloat16)
    a, b = (torch.randn(5, 12, generator=g).to(torch.bfloat16), torch.randn(12, 3, generator=g).to(torch.bfloat16))
    native = (F.conv2d(x, w, padding=1), a @ b, torch.relu(a))
    with _Fp32EagerMath(torch.bfloat16):
        emulated = (F.conv2d(x, w, padding=1), a @ b, torch.relu(a))
    want = (F.conv2d(x.float(), w.float(), padding=1).bfloat16(), (a.float() @ b.float()).bfloat16(), torch.relu(a))
    for n, e, r in zip(native, emulated, want):
        assert (e.shape, e.dtype, e.stride()) == (n.shape, n.dtype, n.stride())
        assert torch.equal(e, r)  # computed in fp32, rounded once
    assert emulated[0].is_contiguous(memory_format=torch.channels_last)


def test_half_precision_models_record_the_same_launches_with_fp32_eager_math() -> None:
    """What ``gpu_job --preflight`` relies on to record bf16 EfficientNet / Swin steps at fp32 speed on an AVX2 CPU:
    the launches (kernel, grid, every argument's shape, stride and dtype, every scalar) are those of the native bf16
    step. Faster R-CNN is not emulated (its box count, a grid, depends on the values): without native bf16 its bf16
    step is ``unsupported`` with the reason."""
    script = (
        "import contextlib\n"
        "import torch\n"
        "from bench.config import Config\n"
        "from bench.cpu_isa import cpu_isa\n"
        "from bench.runner import build_step\n"
        "from bench.kernelbench.aot import record_launches, _Fp32EagerMath, eager_math_for\n"
        "from kernels._triton import poison_outputs\n"
        "def sig(a):\n"
        "    return (tuple(a.shape), a.stride(), str(a.dtype)) if isinstance(a, torch.Tensor) else repr(a)\n"
        "def launches(model, emulate):\n"
        "    torch.manual_seed(0)\n"
        "    cm = _Fp32EagerMath(torch.bfloat16) if emulate else contextlib.nullcontext()\n"
        "    with record_launches(132) as ls, poison_outputs(0.0), cm:\n"
        "        step, _ = build_step(Config(model, 'triton', 'infer', 'cpu', 'bf16', 1, False, 'all', 64))\n"
        "        step()\n"
        "    return [(l.fn.__name__, str(l.grid), [sig(a) for a in l.args], sorted(l.kwargs.items())) for l in ls]\n"
        "for m in ('efficientnet_b0', 'swin_t'):\n"
        "    a, b = launches(m, False), launches(m, True)\n"
        "    assert a and a == b, (m, len(a), len(b))\n"
        "    print(m, len(a), eager_math_for(m, 'bf16'), eager_math_for(m, 'fp32'))\n"
        "print('fasterrcnn_resnet50_fpn', eager_math_for('fasterrcnn_resnet50_fpn', 'bf16'))\n"
        "from bench.kernelbench.aot import ARCHS, compile_model_case\n"
        "[r] = compile_model_case('fasterrcnn_resnet50_fpn', 1, 'bf16', 'infer', ARCHS['sm_90'])\n"
        "print(r['status'], r['message'])\n"
        "print(cpu_isa()['cpu_bf16_native'])\n"
    )
    lines = _script_lines(script, timeout=600)
    native_bf16 = lines[4] == "True"  # this CPU (bench.cpu_isa): AVX2 here, so the bf16 steps are emulated
    assert lines[0].split()[:2] == ["efficientnet_b0", "16"] and lines[1].split()[:2] == ["swin_t", "12"]
    for line in lines[:2]:  # bf16 emulated exactly when the CPU has no native bf16; fp32 never
        assert line.split()[2:] == ["native" if native_bf16 else "fp32-emulated", "native"]
    assert lines[2] == "fasterrcnn_resnet50_fpn native"
    if not native_bf16:  # a detector's bf16 step is not emulated (values steer its grids): unsupported, said why
        assert lines[3].startswith("unsupported no native bf16 on this CPU"), lines[3]
