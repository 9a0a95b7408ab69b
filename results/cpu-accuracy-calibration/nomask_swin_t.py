# The swin_t mask-dropping test double (tests/bench/test_accuracy.py) at other sizes. Run from the repo root:
#   PYTHONPATH=. OMP_NUM_THREADS=1 python results/cpu-accuracy-calibration/nomask_swin_t.py 32 224
import sys
sys.path.insert(0, "tests/bench")
import torch, dataclasses
from bench.config import Config
from bench.runner import measure, RunOptions
from kernels.registry import KernelSpec, get_kernel, register_kernel
from models.swin import window_attention_eager
real = get_kernel("window_attention")
def bad(q, k, v, bias, mask, scale): return window_attention_eager(q, k, v, bias, None, scale)
def patch(m):
    s = [x for x in m.modules() if getattr(x, "hot_path", None) == "window_attention"]
    for x in s: x.attn_fn = bad
    return len(s)
register_kernel(dataclasses.replace(real, name="nomask", patch_model=patch))
o = RunOptions(warmup_s=0, min_time_s=0.01, min_samples=2, count_flops=False, threads=1)
for size in [int(a) for a in sys.argv[1:]]:
    r, _ = measure(Config("swin_t", "triton", "infer", "cpu", "fp32", 1, kernels="nomask", input_size=size), o)
    print(size, r["status"], r["acc_rel_fro"], r["acc_note"], flush=True)
