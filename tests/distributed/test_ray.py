"""``run --ray``: a real local Ray cluster (a head and a second node process) runs a small CPU sweep.

Checked: the Ray CSV holds exactly the sweep's configs, the same set a local run gives; workers killed mid-sweep are
retried once on the other node (ok) or become ``crashed`` rows, every config still exactly once; a driver killed
mid-sweep leaves its finished rows and ``--resume`` completes the run; bad Ray flags exit 2 with one line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

ray = pytest.importorskip("ray", reason="the Ray tests need the 'ray' extra: pip install -e '.[ray]'")

import ray_fake_models  # noqa: E402, F401 - registers the ray_* fault models in this (driver) process
from ray.cluster_utils import Cluster  # noqa: E402

from bench.cli import main  # noqa: E402
from bench.config import Config, expand, key_of_row  # noqa: E402
from bench.distributed import RAY_COLUMNS, run_on_ray  # noqa: E402
from bench.io import read_results  # noqa: E402
from bench.runner import RESULT_COLUMNS, RunOptions  # noqa: E402
from bench.sweep import run_sweep  # noqa: E402

# One xdist worker runs every Ray test (`nox -s tests` uses --dist loadgroup): the module's clusters share the
# node's default ports and must not start twice at once.
pytestmark = [pytest.mark.ray, pytest.mark.xdist_group("ray")]

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
OPTS = RunOptions(warmup_s=0.01, min_time_s=0.05, count_flops=False)
FAST = ["--devices", "cpu", "--min-time-s", "0.05", "--warmup-s", "0.01", "--no-flops", "--no-progress"]
MB = 1024**2


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """A head node and one worker node (1 CPU each) on this machine; the worker node declares one GPU (Ray does not
    check: on a CPU machine it is a slot the scheduler hands out, which is what the GPU path needs). Workers inherit
    PYTHONPATH (for ``ray_fake_models``) and the marker directory from the environment the node processes start
    with."""
    markers = tmp_path_factory.mktemp("markers")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join(p for p in [str(HERE), os.environ.get("PYTHONPATH", "")] if p))
        mp.setenv("VB_RAY_MARKER_DIR", str(markers))
        mp.setenv("OMP_NUM_THREADS", "1")
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False,
                                                          "object_store_memory": 80 * MB})
        try:
            gpu_node = c.add_node(num_cpus=1, num_gpus=1, object_store_memory=80 * MB)
            c.wait_for_nodes()
            yield SimpleNamespace(address=c.address, markers=markers, gpu_node=gpu_node.node_id)
        finally:
            if ray.is_initialized():
                ray.shutdown()
            c.shutdown()


def test_the_ray_tests_share_one_xdist_worker(request: pytest.FixtureRequest) -> None:
    """Under ``--dist loadgroup`` (``nox -s tests``) xdist marks this module's tests with its group ("@ray" on the
    node id) and sends them to one worker. pytest 9.2 with pytest-xdist 3.8 drops the mark silently
    (pytest-dev/pytest-xdist#1386): the module's clusters then start on two workers at once, on the same ports."""
    if not request.config.getoption("loadgroup", False):
        pytest.skip("not running under pytest-xdist --dist loadgroup")
    assert request.node.nodeid.endswith("@ray"), (request.node.nodeid, pytest.__version__)


def _cpu_sweep() -> list[Config]:
    return expand(["basic_cnn"], [1, 2], ["fp32"], ["cpu"], ["infer"], ["eager"])


@pytest.fixture(scope="module")
def ray_run(cluster: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """One Ray sweep: basic_cnn b1 b2 (as a local run), a model whose worker dies once, one whose worker always
    dies, and a cuda config (for the declared GPU). Also the same CPU sweep run locally, both timed."""
    (cluster.markers / "die_once").unlink(missing_ok=True)
    faults = expand(["ray_die_once", "ray_die_always"], [1], ["fp32"], ["cpu"], ["infer"], ["eager"])
    gpu = Config("basic_cnn", "eager", "infer", "cuda", "fp32", 1)
    configs = [*_cpu_sweep(), *faults, gpu]
    out = tmp_path_factory.mktemp("ray") / "run"
    t0 = time.perf_counter()
    rows = run_on_ray(configs, out, OPTS, address=cluster.address, progress=False)
    ray_s = time.perf_counter() - t0
    local = tmp_path_factory.mktemp("local") / "run"
    t0 = time.perf_counter()
    run_sweep(_cpu_sweep(), local, OPTS, progress=False)
    local_s = time.perf_counter() - t0
    print(f"\nsmall sweep (basic_cnn b1 b2 + 2 fault configs + 1 cuda config): Ray {ray_s:.1f} s; "
          f"basic_cnn b1 b2 locally: {local_s:.1f} s")
    return SimpleNamespace(configs=configs, rows=rows, out=out, local=local, markers=cluster.markers,
                           gpu_node=cluster.gpu_node)


def _rows_by_model(out: Path) -> dict[str, list[dict]]:
    by: dict[str, list[dict]] = {}
    for r in read_results(out / "results.csv").to_dict("records"):
        by.setdefault(r["model"], []).append(r)
    return by


def test_ray_rows_are_the_configs_of_a_local_run(ray_run: SimpleNamespace) -> None:
    df = read_results(ray_run.out / "results.csv")
    assert list(df.columns) == [*RESULT_COLUMNS, *RAY_COLUMNS]
    keys = [key_of_row(r) for r in df.to_dict("records")]
    assert sorted(keys) == sorted(c.key() for c in ray_run.configs)  # every config exactly once
    local = {key_of_row(r) for r in read_results(ray_run.local / "results.csv").to_dict("records")}
    ray_cpu = {key_of_row(r) for r in df.to_dict("records") if r["model"] == "basic_cnn" and r["device"] == "cpu"}
    assert ray_cpu == local == {c.key() for c in _cpu_sweep()}
    nodes = {n["node"] for n in json.loads((ray_run.out / "env.json").read_text())["ray"]["nodes"]}
    assert len(nodes) == 2
    for r in _rows_by_model(ray_run.out)["basic_cnn"]:
        if r["device"] == "cuda":  # num_gpus=1: it ran on the node with the GPU slot, and names the slot
            assert r["node"] == ray_run.gpu_node and r["gpu_id"] == "0" and r["attempts"] == "1"
            import torch

            assert r["status"] == ("ok" if torch.cuda.is_available() else "unsupported"), r["error"]
            continue
        assert r["status"] == "ok" and r["attempts"] == "1" and r["node"] in nodes
        assert r["gpu_id"] is None  # a CPU config holds no GPU
        assert int(r["n_samples"]) >= 5 and float(r["latency_ms_p50"]) > 0
        # per-row facts come from the worker that measured the row
        for col in ("device_name", "host", "torch_version", "git_sha", "threads", "timestamp"):
            assert r[col], col
        assert r["threads"] == "1"  # --ray-cpus-per-task 1 -> torch runs with exactly the one CPU reserved
    samples = (ray_run.out / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 3  # basic_cnn b1, b2 and ray_die_once (ok on its retry)


def test_killed_workers_are_retried_on_another_node_or_crash(ray_run: SimpleNamespace) -> None:
    by = _rows_by_model(ray_run.out)
    assert (ray_run.markers / "die_once").exists()  # the first attempt really ran, and died
    [once] = by["ray_die_once"]
    assert once["status"] == "ok" and once["attempts"] == "2"
    assert "attempt 1: WorkerCrashedError on node " in once["error"]
    died_on = once["error"].split("on node ")[1][:12]
    assert not once["node"].startswith(died_on)  # the retry ran on the other node
    [always] = by["ray_die_always"]
    assert always["status"] == "crashed" and always["attempts"] == "2"
    assert "attempt 1: WorkerCrashedError on node" in always["error"]
    assert "attempt 2: WorkerCrashedError on node" in always["error"]
    first, second = (part.split("on node ")[1][:12] for part in always["error"].split("; "))
    assert first != second
    assert always["node"].startswith(second) and always["host"]
    # the sweep reports failure like a local one: a crashed row counts, unsupported/ok do not
    from bench.sweep import FAILED_STATUSES

    assert [r["model"] for r in ray_run.rows if r["status"] in FAILED_STATUSES] == ["ray_die_always"]


def test_a_hung_worker_is_cancelled_into_a_timeout_row(cluster: SimpleNamespace, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.distributed as dist

    monkeypatch.setattr(dist, "_TIMEOUT_GRACE_S", 0.5)  # the real grace (60 s) covers a fresh worker's imports
    cfg = Config("ray_hang", "eager", "infer", "cpu", "fp32", 1)
    t0 = time.perf_counter()
    [row] = run_on_ray([cfg], tmp_path / "run", RunOptions(warmup_s=0.01, min_time_s=0.05, count_flops=False,
                                                           timeout_s=2.0), address=cluster.address, progress=False)
    assert time.perf_counter() - t0 < 60  # the model sleeps 120 s: the driver did not wait for it
    assert row["status"] == "timeout" and "cancelled after 2.5 s on node" in row["error"]
    assert read_results(tmp_path / "run" / "results.csv")["status"].tolist() == ["timeout"]


def _driver_env(cluster: SimpleNamespace) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO)])
    env["VISIONBENCH_PLUGINS"] = "ray_fake_models"  # the driver validates the sweep's model names
    env["VB_RAY_MARKER_DIR"] = str(cluster.markers)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _n_rows(path: Path) -> int:
    return max(0, len(path.read_text().splitlines()) - 1) if path.exists() else 0


def test_resume_after_killing_the_driver_completes_the_run(cluster: SimpleNamespace, tmp_path: Path) -> None:
    for m in ("gate", "gate_claimed"):
        (cluster.markers / m).unlink(missing_ok=True)
    out = tmp_path / "run"
    # basic_cnn b1 b2 + ray_gate b1 b2: the first ray_gate build blocks until the gate opens, so the driver is
    # surely mid-sweep when it is killed, and on one CPU the other configs finish meanwhile.
    args = ["run", "--models", "basic_cnn", "ray_gate", "--batch-sizes", "1", "2", "--dtypes", "fp32", *FAST,
            "--ray", cluster.address, "--out", str(out)]
    env = _driver_env(cluster)
    proc = subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 150
        while _n_rows(out / "results.csv") < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, f"driver ended early (rc={proc.returncode}): {proc.stdout.read()[-2000:]}"
        assert _n_rows(out / "results.csv") == 3, "three configs should finish while the gate holds the fourth"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    before = (out / "results.csv").read_text()
    (cluster.markers / "gate").touch()
    # The resuming driver runs in this process (the same CLI path; only the killed one had to be a process of its
    # own): one interpreter + torch import less. ray_fake_models is registered here, so it ships to the workers.
    assert main([*args, "--resume"]) == 0
    assert not ray.is_initialized()  # a CLI run disconnects from the cluster it connected to
    after = (out / "results.csv").read_text()
    assert after.startswith(before)  # the rows written before the kill were kept as they were
    keys = [key_of_row(r) for r in read_results(out / "results.csv").to_dict("records")]
    want = expand(["basic_cnn", "ray_gate"], [1, 2], ["fp32"], ["cpu"], ["infer"], ["eager"])
    assert sorted(keys) == sorted(c.key() for c in want)  # completed, each config exactly once


def test_bad_ray_flags_exit_2_with_one_line(cluster: SimpleNamespace, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    base = ["run", "--models", "basic_cnn", *FAST, "--out", str(tmp_path / "run")]
    assert main([*base, "--ray", cluster.address, "--ray-cpus-per-task", "0"]) == 2
    assert "--ray-cpus-per-task must be a positive integer" in capsys.readouterr().err
    assert main([*base, "--ray", cluster.address, "--ray-cpus-per-task", "2"]) == 2  # nodes have 1 CPU each
    err = capsys.readouterr().err.strip()
    assert "exceeds the largest node's CPUs" in err and "\n" not in err
    assert main([*base, "--ray=", "--ray-cpus-per-task", "1"]) == 2
    assert "--ray needs an address" in capsys.readouterr().err
    assert not (tmp_path / "run" / "results.csv").exists()


@pytest.mark.gpu
def test_each_cuda_config_reserves_one_gpu(tmp_path: Path) -> None:
    """On a GPU machine: a private local Ray instance; every cuda row names the GPU Ray gave it."""
    import torch

    configs = expand(["basic_cnn"], [1, 2], ["fp32"], ["cuda"], ["infer"], ["eager"])
    rows = run_on_ray(configs, tmp_path / "run", OPTS, address="local", progress=False)
    assert [r["status"] for r in rows] == ["ok", "ok"], [r.get("error") for r in rows]
    for r in rows:
        assert r["gpu_id"] in {str(i) for i in range(torch.cuda.device_count())}
        assert r["device_name"] == torch.cuda.get_device_name(int(r["gpu_id"]))
        assert r["attempts"] == 1 and r["node"]
