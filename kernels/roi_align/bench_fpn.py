"""GPU timing of Faster R-CNN's box-head pooling: ``python -m kernels.roi_align.bench_fpn`` (needs CUDA).

What ``bench kernels --bench`` cannot time (it runs one map per call): the multi-level (FPN) op against torchvision's
per-level loop, and the pre-reduced backward against the one-atomic-per-tap one. Shape: 2 images x 512 ROIs,
256 channels, 7x7 bins, sampling ratio 2, aligned=False, P2..P5 of an 800x1088 input; boxes log-uniform with sides
32..800 px clipped to the image, levels by the FPN rule. torchvision has no bf16 kernel, so its bf16 rows run fp32
with casts (what its autocast wrapper does). Times: median of ``triton.testing.do_bench`` (L2 flushed per call).
Correctness is checked against torchvision in fp32 before timing.
"""

from __future__ import annotations

import math

import torch
import torchvision.ops as tvo

from . import make_boxes
from .kernel import roi_align_backward
from .op import roi_align_multilevel_triton

SIZES = [(200, 272), (100, 136), (50, 68), (25, 34)]
SCALES = [1 / 4, 1 / 8, 1 / 16, 1 / 32]


def fpn_inputs(dtype: torch.dtype, device: str, channels_last: bool = False, seed: int = 0):
    """``(features [4 x [2, 256, H_l, W_l]], rois [1024, 5] fp32, levels [1024] int64)``."""
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(2, 256, h, w, generator=g).to(device=device, dtype=dtype) for h, w in SIZES]
    if channels_last:
        feats = [f.contiguous(memory_format=torch.channels_last) for f in feats]
    shape = {"N": 2, "H": 800, "W": 1088, "K": 1024, "box_min": 32.0, "box_max": 800.0, "clip": True}
    rois = make_boxes(shape, g).float()
    side = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
    levels = (torch.floor(4 + torch.log2(side / 224) + 1e-6).clamp(2, 5) - 2).to(torch.int64)
    return feats, rois.to(device), levels.to(device)


def torchvision_multilevel(feats, rois, levels, output_size=(7, 7), sampling_ratio=2):
    """torchvision's ``MultiScaleRoIAlign`` pooling loop (one ``roi_align`` per level)."""
    dt = feats[0].dtype
    run = torch.float32 if dt == torch.bfloat16 else dt
    out = torch.zeros(rois.shape[0], feats[0].shape[1], *output_size, device=rois.device, dtype=run)
    for lvl, (f, s) in enumerate(zip(feats, SCALES)):
        idx = torch.where(levels == lvl)[0]
        out = out.index_put((idx,), tvo.roi_align(f.to(run), rois[idx].to(run), output_size, s, sampling_ratio))
    return out.to(dt)


def _ms(fn) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


def bench_case(dtype: torch.dtype, channels_last: bool, dev: str = "cuda") -> dict[str, float]:
    """Errors against torchvision (fp32 math) and median times in ms for one dtype and layout."""
    feats, rois, levels = fpn_inputs(dtype, dev, channels_last)
    leaves = [f.detach().requires_grad_() for f in feats]
    ours = roi_align_multilevel_triton(leaves, rois, SCALES, levels, (7, 7), 2, False)
    tv_leaves = [f.detach().requires_grad_() for f in feats]
    theirs = torchvision_multilevel(tv_leaves, rois, levels)
    g = torch.randn_like(ours)
    err = (ours.float() - torchvision_multilevel([f.float() for f in feats], rois, levels)).abs().max().item()
    gr_ours = torch.autograd.grad(ours, leaves, g, retain_graph=True)
    gr_tv = torch.autograd.grad(theirs, tv_leaves, g, retain_graph=True)
    gerr = max((a.float() - b.float()).abs().max().item() for a, b in zip(gr_ours, gr_tv))
    shapes = [f.shape for f in feats]
    scales_t = torch.tensor(SCALES, dtype=torch.float64, device=dev)

    def bwd(pre: bool):
        return lambda: roi_align_backward(g, rois, shapes, channels_last, dtype, (7, 7), 1.0, 2, False,
                                          levels=levels, scales=scales_t, prereduce=pre)

    return {
        "err_fwd": err, "err_bwd": gerr,
        "ours_fwd": _ms(lambda: roi_align_multilevel_triton(feats, rois, SCALES, levels, (7, 7), 2, False)),
        "tv_fwd": _ms(lambda: torchvision_multilevel(feats, rois, levels)),
        "ours_bwd_prereduced": _ms(bwd(True)),
        "ours_bwd_taps": _ms(bwd(False)),
        "tv_bwd": _ms(lambda: torch.autograd.grad(theirs, tv_leaves, g, retain_graph=True)),
    }


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")
    _, _, lv = fpn_inputs(torch.float32, "cuda")
    per_level = torch.bincount(lv, minlength=4).tolist()
    print(f"{torch.cuda.get_device_name()}: times in us (median); ROIs per level {per_level}")
    for dtype in (torch.bfloat16, torch.float32):
        for cl in (False, True):
            t = bench_case(dtype, cl)
            assert math.isfinite(t["err_fwd"]) and math.isfinite(t["err_bwd"])
            times = "  ".join(f"{k} {v * 1e3:8.1f}" for k, v in t.items() if not k.startswith("err"))
            print(f"{str(dtype):15s} {'nhwc' if cl else 'nchw'}  max|err| fwd {t['err_fwd']:.2e} bwd {t['err_bwd']:.2e}"
                  f"  {times}  speedup fwd {t['tv_fwd'] / t['ours_fwd']:.2f}x bwd "
                  f"{t['tv_bwd'] / t['ours_bwd_prereduced']:.2f}x")


if __name__ == "__main__":
    main()
