"""``run --shard I/N`` and ``merge``: shards cover a sweep exactly once, merge joins them, mismatches are refused."""

from __future__ import annotations

import csv
import json
import random
import shutil
from pathlib import Path

import pytest

from bench.cli import main
from bench.config import KEY_FIELDS, Config, expand, key_of_row
from bench.distributed import select_shard
from bench.io import read_jsonl, read_results

FAST = ["--devices", "cpu", "--min-time-s", "0.02", "--warmup-s", "0", "--no-flops", "--threads", "1",
        "--no-progress"]
# --allow-slow-fallback: basic_cnn is cheap in bf16 even where bf16 takes PyTorch's fallback path (AVX2), and every
# row must be `ok` for the merge checks below.
SWEEP = ["--models", "basic_cnn", "--batch-sizes", "1", "2", "3", "--dtypes", "fp32", "bf16", "--allow-slow-fallback"]
N_SHARDS = 3


def _sweep_configs() -> list[Config]:
    return expand(["basic_cnn"], [1, 2, 3], ["fp32", "bf16"], ["cpu"], ["infer"], ["eager"])


def _keys(path: Path) -> list[tuple[str, ...]]:
    return [key_of_row(r) for r in read_results(path).to_dict("records")]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The 6-config sweep run as 3 shards through the CLI (real measurements, tiny budget)."""
    root = tmp_path_factory.mktemp("shards")
    dirs = []
    for i in range(N_SHARDS):
        d = root / f"shard{i}"
        assert main(["run", *SWEEP, *FAST, "--shard", f"{i}/{N_SHARDS}", "--out", str(d)]) == 0
        dirs.append(d)
    return dirs


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("spec", ["3/3", "-1/3", "1/0", "a/b", "1", "1/2/3", "", "0.5/2"])
def test_bad_shard_spec_exits_2_with_one_line(spec: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["run", *SWEEP, *FAST, f"--shard={spec}", "--out", str(out)]) == 2
    assert "--shard" in _one_error_line(capsys)
    assert not out.exists()  # refused before anything was measured or written


def test_select_shard_is_a_deterministic_partition() -> None:
    configs = expand(["basic_cnn", "resnet18"], [1, 2, 4], ["fp32", "bf16"], ["cpu"], ["infer", "train"], ["eager"])
    shuffled = list(configs)
    random.Random(1).shuffle(shuffled)
    for n in (1, 2, 3, 5, len(configs) + 2):
        parts = [select_shard(configs, f"{i}/{n}") for i in range(n)]
        assert sorted(c for p in parts for c in p) == sorted(configs)  # every config exactly once
        assert max(map(len, parts)) - min(map(len, parts)) <= 1  # balanced
        # the slice depends on the sweep, not on the order the flags listed it in
        assert [set(select_shard(shuffled, f"{i}/{n}")) for i in range(n)] == [set(p) for p in parts]
        for p in parts:  # within a shard, configs keep the sweep's order
            assert p == [c for c in configs if c in set(p)]
    assert select_shard([*configs, configs[0]], "0/1") == configs  # a repeated config is measured once


def test_shards_cover_the_sweep_once_and_merge(shards: list[Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    sweep = {c.key() for c in _sweep_configs()}
    per_shard = [_keys(d / "results.csv") for d in shards]
    assert all(per_shard)  # 6 configs over 3 shards: none is empty
    assert sorted(k for keys in per_shard for k in keys) == sorted(sweep)  # disjoint, and together the sweep
    for d in shards:  # each shard records the whole sweep, for merge
        recorded = json.loads((d / "sweep.json").read_text())
        assert {Config.from_dict(c).key() for c in recorded["configs"]} == sweep

    out = tmp_path / "merged"
    assert main(["merge", *map(str, shards), "--out", str(out)]) == 0
    assert "merged 6 of 6 configs" in capsys.readouterr().out
    merged = read_results(out / "results.csv")
    assert sorted(_keys(out / "results.csv")) == sorted(sweep)
    assert set(merged["status"]) == {"ok"}
    # rows are carried over unchanged: the merged latency of each config is the one its shard measured
    shard_rows = {key_of_row(r): r for d in shards for r in read_results(d / "results.csv").to_dict("records")}
    for r in merged.to_dict("records"):
        assert r["latency_ms_p50"] == shard_rows[key_of_row(r)]["latency_ms_p50"]
    samples = read_jsonl(out / "samples.jsonl")
    assert sorted(tuple(s["key"]) for s in samples) == sorted(sweep)
    assert all(len(s["samples_ms"]) >= 5 for s in samples)
    for i in range(N_SHARDS):
        assert json.loads((out / f"env-{i}.json").read_text()) == json.loads((shards[i] / "env.json").read_text())
    env = json.loads((out / "env.json").read_text())
    assert env["merged_from"] == [str(d) for d in shards]
    assert {Config.from_dict(c).key() for c in json.loads((out / "sweep.json").read_text())["configs"]} == sweep
    assert "## basic_cnn" in (out / "report.md").read_text()


def test_merge_reports_gaps_and_the_merged_run_resumes(shards: list[Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "partial"
    assert main(["merge", str(shards[0]), str(shards[1]), "--out", str(out)]) == 1  # a gap is not a clean merge
    text = capsys.readouterr().out
    missing = [Config.from_dict(dict(zip(KEY_FIELDS, k))).label() for k in _keys(shards[2] / "results.csv")]
    assert f"gaps: {len(missing)} configs" in text
    for label in missing:
        assert label in text
    # the merged directory is a run directory: the sweep's own command with --resume fills exactly the gaps
    assert main(["run", *SWEEP, *FAST, "--resume", "--out", str(out)]) == 0
    assert sorted(_keys(out / "results.csv")) == sorted(c.key() for c in _sweep_configs())


def test_merge_reports_duplicates_and_keeps_each_config_once(shards: list[Path], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    # shard 0 measured twice; the first copy's rows failed (as if the node had a bad day), so the ok rows win
    failed = _copy(shards[0], tmp_path / "shard0-failed")
    with (shards[0] / "results.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    with (failed / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({**r, "status": "error", "error": "RuntimeError: injected"} for r in rows)
    out = tmp_path / "merged"
    assert main(["merge", str(failed), *map(str, shards), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"duplicates: {len(rows)} configs" in text and str(failed) in text
    assert sorted(_keys(out / "results.csv")) == sorted(c.key() for c in _sweep_configs())  # each once
    assert set(read_results(out / "results.csv")["status"]) == {"ok"}


def _edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_merge_refuses_shards_of_another_sweep(shards: list[Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other"  # a real shard of a different sweep (batch 3 left out)
    assert main(["run", "--models", "basic_cnn", "--batch-sizes", "1", "2", "--dtypes", "fp32", "bf16", *FAST,
                 "--shard", "2/3", "--out", str(other)]) == 0
    capsys.readouterr()
    out = tmp_path / "merged"
    assert main(["merge", str(shards[0]), str(shards[1]), str(other), "--out", str(out)]) == 2
    err = _one_error_line(capsys)
    assert "sweep definition differs" in err and str(other) in err
    assert not (out / "results.csv").exists()


def test_merge_refuses_other_code_versions(shards: list[Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    newer = _copy(shards[2], tmp_path / "newer")  # as if shard 2 ran from another commit
    _edit_json(newer / "sweep.json", git_sha="0123456789ab", git_dirty=False)
    assert main(["merge", str(shards[0]), str(shards[1]), str(newer), "--out", str(tmp_path / "m1")]) == 2
    err = _one_error_line(capsys)
    assert "code versions differ" in err and "0123456789ab" in err

    mixed = _copy(shards[2], tmp_path / "mixed")  # one row measured by other code (a resume after a commit)
    csv_path = mixed / "results.csv"
    df = read_results(csv_path)
    old_sha = df["git_sha"].iloc[0]
    lines = csv_path.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace(old_sha, "fedcba987654")
    csv_path.write_text("".join(lines))
    assert main(["merge", str(shards[0]), str(shards[1]), str(mixed), "--out", str(tmp_path / "m2")]) == 2
    assert "fedcba987654" in _one_error_line(capsys)


def test_merge_refuses_non_run_directories_and_an_existing_output(shards: list[Path], tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    assert main(["merge", str(shards[0]), str(bare), "--out", str(tmp_path / "m")]) == 2
    assert "no sweep.json" in _one_error_line(capsys)
    assert main(["merge", str(shards[0]), str(tmp_path / "missing"), "--out", str(tmp_path / "m")]) == 2
    assert "no such run directory" in _one_error_line(capsys)
    assert main(["merge", str(shards[0]), str(shards[1]), "--out", str(shards[1])]) == 2
    assert "one of the inputs" in _one_error_line(capsys)
    assert main(["merge", str(shards[0]), "--out", str(shards[2])]) == 2
    assert "already holds results.csv" in _one_error_line(capsys)
    with pytest.raises(SystemExit) as e:  # --out is required: argparse's one-line error, exit 2
        main(["merge", str(shards[0])])
    assert e.value.code == 2
    assert "--out" in _one_error_line(capsys)


def test_a_ray_run_can_resume_a_local_run_directory(tmp_path: Path) -> None:
    """``run --ray --resume`` on a local run's directory: the CSV gains the Ray columns (old rows padded, a torn
    last line dropped) and the row writer appends to it."""
    from bench.distributed import RAY_COLUMNS, _ensure_columns
    from bench.io import RowWriter
    from bench.runner import RESULT_COLUMNS

    path = tmp_path / "results.csv"
    RowWriter(path, RESULT_COLUMNS).append({"model": "basic_cnn", "batch_size": 1, "status": "ok"})
    with path.open("a") as f:
        f.write("basic_cnn,eager,inf")  # killed mid-write
    _ensure_columns(path, RAY_COLUMNS)
    RowWriter(path, [*RESULT_COLUMNS, *RAY_COLUMNS]).append({"model": "basic_cnn", "batch_size": 2, "node": "n1"})
    df = read_results(path)
    assert list(df.columns) == [*RESULT_COLUMNS, *RAY_COLUMNS]
    assert df["batch_size"].tolist() == ["1", "2"] and df["node"].tolist() == [None, "n1"]
