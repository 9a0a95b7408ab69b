"""Bad files never give a traceback: a suite file with a wrongly typed value, or a ``results.csv`` resumed with a
malformed row, prints one line naming the file and the field, exits 2 and measures nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.cli import main


@pytest.mark.parametrize("line, needle", [
    ("models = 5", "key 'models' must be a list of model names or \"all\", got 5"),
    ('models = "resnet50"', "key 'models' must be a list of model names or \"all\", got 'resnet50'"),
    ('models = ["resnet50"]\ntimeout_s = "abc"', "key 'timeout_s' must be a number of seconds >= 0, got 'abc'"),
    ('models = ["resnet50"]\nbatch_sizes = [1, "2"]', "key 'batch_sizes' must be a list of positive integers"),
    ('models = ["resnet50"]\nisolate = "yes"', "key 'isolate' must be true or false"),
    ('models = ["resnet50"]\nmodel_batch_sizes = {resnet50 = 4}', "key 'model_batch_sizes' must be a table"),
])
def test_suite_values_are_checked_by_type(line: str, needle: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    import bench.config as cfg

    bad = tmp_path / "suites.toml"
    bad.write_text(f"[suite.x]\n{line}\n")
    monkeypatch.setattr(cfg.load_suites, "__defaults__", (bad,))
    assert main(["run", "--suite", "x", "--out", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and "suite 'x'" in err and needle in err, err
    assert not (tmp_path / "never").exists()


def test_the_shipped_suites_pass_the_type_check() -> None:
    from bench.config import load_suites

    assert {"quick", "gpu"} <= set(load_suites())


HEADER = "model,backend,mode,device,dtype,batch_size,channels_last,kernels,input_size,status\n"


@pytest.mark.parametrize("row, needle", [
    ("fake_ok,eager,infer,cpu,fp32,two,false,,0,ok", "field 'batch_size' must be an integer >= 1, got 'two'"),
    ("fake_ok,eager,infer,cpu,fp32,1,false,,big,ok", "field 'input_size' must be an integer >= 0, got 'big'"),
    ("fake_ok,eager,,cpu,fp32,1,false,,0,ok", "field 'mode' is missing or empty"),
])
def test_resume_refuses_a_malformed_row(row: str, needle: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r"
    out.mkdir()
    good = "fake_ok,eager,infer,cpu,fp32,1,false,,0,ok"
    (out / "results.csv").write_text(HEADER + good + "\n" + row + "\n")
    rc = main(["run", "--models", "basic_cnn", "--out", str(out), "--resume", "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{out / 'results.csv'}:3: {needle}" in err, err
    assert sorted(p.name for p in out.iterdir()) == ["results.csv"]  # refused before anything was written
