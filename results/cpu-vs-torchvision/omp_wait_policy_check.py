import os, time, torch, torchvision
print(torch.__config__.parallel_info().splitlines()[:8])
m = torchvision.models.resnet18().eval(); x = torch.randn(1, 3, 224, 224)
torch.set_num_threads(int(os.environ["T"]))
with torch.no_grad():
    m(x)
    ts = []
    for _ in range(6):
        t0 = time.perf_counter(); m(x); ts.append(time.perf_counter() - t0)
print(os.environ["T"], os.environ.get("OMP_WAIT_POLICY"), sorted(round(t*1e3) for t in ts))
