"""rel_fro of window attention (kernel and eager) vs float64 for half dtypes: checker shapes + test_public_api shapes."""
import sys, json, torch
import kernels
from kernels.registry import get_kernel
from bench.kernelbench.check import check_case
spec = get_kernel("window_attention")
seeds = [int(s) for s in sys.argv[1].split(",") if s.isdigit()]
for seed in seeds:
    for name, shape in spec.test_shapes.items():
        for dt in (torch.float16, torch.bfloat16):
            for direction in ("forward", "backward"):
                for r in check_case(spec, name, shape, dt, direction, "cpu", seed=seed):
                    print(json.dumps({"src": "check", "seed": seed, "shape": name, "dtype": str(dt), "out": r["output"],
                                      "k": r.get("rel_fro_err"), "e": r.get("eager_rel_fro_err"), "status": r["status"]}), flush=True)
sys.path.insert(0, "tests/kernels")
import test_window_attention as T
from kernels.testing import error_stats
from kernels.window_attention.op import window_attention
from kernels.window_attention.reference import window_attention_reference
if len(sys.argv) > 2:
    for seed in (1, 2):
        for shp in [(6, 2, 49, 32, 3), (4, 1, 10, 16, 2), (2, 1, 100, 16, 1)]:
            for dt in (torch.float16, torch.bfloat16):
                args = T._inputs(*shp, dt, seed)
                gi = [0, 1, 2, 3]
                g = torch.randn(args[0].shape, generator=torch.Generator().manual_seed(123)).to(dt)
                ref = T._grads(window_attention_reference, args, gi, g, to=torch.float64)
                eager = T._grads(window_attention_reference, args, gi, g)
                kern = T._grads(window_attention, args, gi, g)
                for nm, k, e, r in zip(["out", "gq", "gk", "gv", "gbias"], kern, eager, ref):
                    print(json.dumps({"src": "api", "seed": seed, "shape": str(shp), "dtype": str(dt), "out": nm,
                                      "k": error_stats(k, r).rel_fro, "e": error_stats(e, r).rel_fro}), flush=True)
