"""``bench.compare_match`` value by value: which table kind a CSV is, the keys and labels of rows, every bad-input
message (file:line) of a results CSV and a samples file, how repetitions aggregate, the samples attached per
repetition, the environment of a run, and the projection of keys by ``--match-ignore``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from bench.compare_match import (
    CHECKS,
    KERNELS,
    MODELS,
    Table,
    _aggregate,
    _csv_kind,
    _read_env,
    _read_samples,
    _read_table,
    _row_key,
    fmt_key,
    label,
    load_run,
    project,
)
from bench.io import BadInputError

M_HEAD = ("model,backend,mode,device,dtype,batch_size,status,latency_ms_p50,latency_ms_p20,latency_ms_p80,n_samples,"
          "device_name,rep")
K_HEAD = "kernel,shape,dtype,direction,provider,status,p50_us,p20_us,p80_us,n_samples,device_name"
C_HEAD = "kernel,shape,dtype,direction,output,status,max_abs_err,device_name"
# The models key of ``basic_cnn eager infer cpu fp32 b1`` on device ``X`` (Config.key() + device name).
KEY = ("basic_cnn", "eager", "infer", "cpu", "fp32", "1", "false", "", "0", "", "back-to-back", "X")


def _write(path: Path, *lines: str, end: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + end)
    return path


def _mrow(status: str = "ok", p50: str = "2.0", model: str = "basic_cnn", dev: str = "X", rep: str = "",
          n: str = "10", backend: str = "eager") -> str:
    return f"{model},{backend},infer,cpu,fp32,1,{status},{p50},1.5,2.5,{n},{dev},{rep}"


def _bad(fn, *args) -> str:  # noqa: ANN001 - the message of the BadInputError that fn(*args) raises
    with pytest.raises(BadInputError) as e:
        fn(*args)
    return str(e.value)


# --- kinds, keys, labels ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("header, kind", [
    ("model,kernel,provider,output", MODELS), ("kernel,shape,provider", KERNELS), ("provider,kernel,output", KERNELS),
    ("kernel,shape,output", CHECKS), ("output,kernel", CHECKS), ('"kernel","output"', CHECKS)])
def test_csv_kind_is_read_from_the_header(tmp_path: Path, header: str, kind: object) -> None:
    assert _csv_kind(_write(tmp_path / "t.csv", header, "a,b,c,d")) is kind


@pytest.mark.parametrize("header", ["kernel,shape", "provider,shape", "output,shape", "Model,KERNEL", "x", ""])
def test_csv_kind_refuses_other_headers(tmp_path: Path, header: str) -> None:
    p = _write(tmp_path / "t.csv", header, end="" if not header else "\n")
    assert _bad(_csv_kind, p) == (f"{p}:1: not a visionbench results, kernels or kernels_check CSV (no model/kernel "
                                  "column)")
    assert _bad(load_run, p) == _bad(_csv_kind, p)


def test_fmt_key_names_the_fields_that_are_set() -> None:
    assert fmt_key(MODELS, KEY) == ("(model=basic_cnn, backend=eager, mode=infer, device=cpu, dtype=fp32, batch_size=1,"
                                    " timer=back-to-back, device_name=X)")
    assert fmt_key(KERNELS, ("add", "8x8", "fp32", "", "triton", "")) == ("(kernel=add, shape=8x8, dtype=fp32, "
                                                                           "provider=triton)")
    assert fmt_key(CHECKS, ("", "0", "false")) == "()"


def test_row_key_and_label() -> None:
    row = {"model": "basic_cnn", "backend": "eager", "mode": "infer", "device": "cpu", "dtype": "fp32",
           "batch_size": 1, "device_name": "X", "status": "ok"}
    assert _row_key(MODELS, row) == KEY
    assert _row_key(MODELS, {**row, "device_name": None}) == (*KEY[:-1], "")
    assert label(MODELS, {**row, "input_size": 64}) == "basic_cnn eager infer cpu fp32 b1 64px"
    k = {"kernel": "add", "shape": "8x8", "dtype": "fp32", "direction": None, "provider": "triton", "device_name": "G"}
    assert _row_key(KERNELS, k) == ("add", "8x8", "fp32", "", "triton", "G")
    assert _row_key(KERNELS, {"kernel": "add", "shape": 0}) == ("add", "0", "", "", "", "")
    assert _row_key(CHECKS, {**k, "output": "y", "provider": "p"}) == ("add", "8x8", "fp32", "", "y", "G")
    assert label(KERNELS, k) == "add 8x8 fp32 None triton"
    assert label(CHECKS, {**k, "output": "grad_x"}) == "add 8x8 fp32 None grad_x"


# --- reading a results CSV -------------------------------------------------------------------------------------------


def test_read_table_rows_reps_and_numbers(tmp_path: Path) -> None:
    p = _write(tmp_path / "results.csv", M_HEAD, _mrow(p50="0.5", rep="1"), _mrow(status="error", p50="", dev="Y"),
               _mrow(p50="1.5", rep="2", n=""))
    t = _read_table(MODELS, p)
    assert (t.kind, t.path, list(t.rows), list(t.reps)) == (MODELS, p, [KEY, (*KEY[:-1], "Y")], [KEY, (*KEY[:-1], "Y")])
    r1, r2 = t.reps[KEY]
    assert (r1["_rep"], r1["_line"], r1["latency_ms_p50"], r2["_rep"], r2["_line"]) == (1, 2, 0.5, 2, 4)
    assert math.isnan(r2["n_samples"])  # an empty numeric cell reads as NaN
    assert (t.rows[KEY]["_reps"], t.rows[KEY]["latency_ms_p50"], t.rows[KEY]["latency_ms_p20"]) == (2, 1.0, 1.5)
    failed = t.rows[(*KEY[:-1], "Y")]
    assert (failed["status"], failed["_line"], failed["_rep"], failed["_reps"]) == ("error", 3, 0, 1)
    assert (t.samples, t.rep_samples) == ({}, {})


def test_read_table_kernels_and_checks(tmp_path: Path) -> None:
    k = _read_table(KERNELS, _write(tmp_path / "kernels.csv", K_HEAD, "add,8x8,fp32,,triton,ok,3,2,4,5,G"))
    key = ("add", "8x8", "fp32", "", "triton", "G")
    assert list(k.rows) == [key] and k.rows[key]["p50_us"] == 3.0 and k.rows[key]["direction"] is None
    c = _read_table(CHECKS, _write(tmp_path / "kernels_check.csv", C_HEAD, "add,8x8,fp32,fwd,y,fail,0.5,G",
                                   "add,8x8,fp32,fwd,z,pass,,G"))
    assert [(r["status"], r["_line"]) for r in c.rows.values()] == [("fail", 2), ("pass", 3)]
    assert [r["max_abs_err"] for r in c.rows.values()][0] == 0.5


@pytest.mark.parametrize("lines, msg", [
    ([_mrow(backend="")], "2: bad config key cells (field 'backend' is missing or empty)"),
    ([_mrow(), _mrow(p50="3")], "3: duplicate config key (model=basic_cnn, backend=eager, mode=infer, device=cpu, "
                                "dtype=fp32, batch_size=1, timer=back-to-back, device_name=X) (first on line 2)"),
    ([_mrow(rep="1"), _mrow(rep="1")], "3: duplicate config key (model=basic_cnn, backend=eager, mode=infer, "
                                       "device=cpu, dtype=fp32, batch_size=1, timer=back-to-back, device_name=X) rep 1 "
                                       "(first on line 2)"),
    ([_mrow(rep="0"), _mrow(rep="1"), _mrow(rep="")], "4: duplicate config key (model=basic_cnn, backend=eager, "
                                                       "mode=infer, device=cpu, dtype=fp32, batch_size=1, "
                                                       "timer=back-to-back, device_name=X) rep 0 (first on line 2)"),
    ([_mrow(status="")], "2: empty status"),
    ([_mrow(model="a"), _mrow(p50="")], "3: status ok but latency_ms_p50 is empty or not positive"),
    ([_mrow(p50="0")], "2: status ok but latency_ms_p50 is empty or not positive"),
    ([_mrow(p50="-1")], "2: status ok but latency_ms_p50 is empty or not positive"),
    ([_mrow(p50="fast")], "2: column 'latency_ms_p50' has non-numeric value 'fast'"),
], ids=["bad-key", "duplicate", "duplicate-rep", "third-row-repeats-rep-0", "empty-status", "p50-empty", "p50-zero",
        "p50-negative", "p50-text"])
def test_read_table_bad_rows_name_file_and_line(tmp_path: Path, lines: list[str], msg: str) -> None:
    p = _write(tmp_path / "results.csv", M_HEAD, *lines)
    assert _bad(_read_table, MODELS, p) == f"{p}:{msg}"


def test_read_table_bad_files(tmp_path: Path) -> None:
    p = _write(tmp_path / "kernels.csv", "kernel,shape,dtype,direction,provider,status", "add,8,fp32,,t,ok")
    assert _bad(_read_table, KERNELS, p) == f"{p}:1: missing columns ['p50_us']"
    p = _write(tmp_path / "k2.csv", K_HEAD, "add,8x8,fp32,,triton,ok,0,2,4,5,G")
    assert _bad(_read_table, KERNELS, p) == f"{p}:2: status ok but p50_us is empty or not positive"
    p = _write(tmp_path / "k3.csv", K_HEAD, "add,8x8,fp32,,triton,ok,3,2,4,5,G", end="")
    assert _bad(_read_table, KERNELS, p) == f"{p}:2: truncated last line (the run was interrupted mid-write?)"


# --- repetitions -----------------------------------------------------------------------------------------------------


def test_aggregate_one_rep_is_the_row_itself() -> None:
    row = {"status": "ok", "latency_ms_p50": 2.0, "_line": 5}
    assert _aggregate(MODELS, [row]) == {**row, "_reps": 1}


def test_aggregate_ok_reps_take_the_median_and_sum_the_samples() -> None:
    reps = [{"status": "ok", "latency_ms_p50": p, "latency_ms_p20": p - 1, "latency_ms_p80": None, "n_samples": n,
             "_line": i} for i, (p, n) in enumerate([(2.0, 10), (6.0, None), (3.0, 5.0)], start=2)]
    assert _aggregate(MODELS, reps) == {"status": "ok", "latency_ms_p50": 3.0, "latency_ms_p20": 2.0,
                                        "latency_ms_p80": None, "n_samples": 15.0, "_line": 2, "_reps": 3}
    k = [{"status": "ok", "p50_us": 1, "p20_us": 1, "p80_us": 1},
         {"status": "ok", "p50_us": 2, "p20_us": 3, "p80_us": 3}]
    assert _aggregate(KERNELS, k) == {"status": "ok", "p50_us": 1.5, "p20_us": 2.0, "p80_us": 2.0, "n_samples": 0.0,
                                      "_reps": 2}


def test_aggregate_a_failed_rep_stands_for_the_config() -> None:
    reps = [{"status": "ok", "latency_ms_p50": 2.0, "n_samples": 4, "_line": 2},
            {"status": "oom", "latency_ms_p50": None, "n_samples": None, "_line": 3},
            {"status": "error", "latency_ms_p50": None, "n_samples": 1, "_line": 4}]
    assert _aggregate(MODELS, reps) == {**reps[1], "_reps": 3}
    checks = [{"status": "pass", "_line": 2}, {"status": "fail", "_line": 3}, {"status": "error", "_line": 4}]
    assert _aggregate(CHECKS, checks) == {"status": "fail", "_line": 3, "_reps": 3}
    assert _aggregate(CHECKS, checks[:1] * 2) == {"status": "pass", "_line": 2, "n_samples": 0.0, "_reps": 2}
    assert _aggregate(MODELS, [{"status": "pass", "_line": 2}, {"status": "ok", "_line": 3}]) == {
        "status": "pass", "_line": 2, "_reps": 2}


# --- samples ---------------------------------------------------------------------------------------------------------


def _table(kind=MODELS, keys=(KEY,)) -> Table:  # noqa: ANN001
    return Table(kind, Path("t.csv"), {k: {"_line": i} for i, k in enumerate(keys, start=2)})


def _rec(samples: object = (1.0, 2.0), dev: str | None = "X", rep: int | None = None, **kw: object) -> str:
    r = {"model": "basic_cnn", "backend": "eager", "mode": "infer", "device": "cpu", "dtype": "fp32", "batch_size": 1,
         **kw}
    if samples is not None:
        r["samples_ms"] = list(samples) if isinstance(samples, tuple) else samples
    if dev is not None:
        r["device_name"] = dev
    if rep is not None:
        r["rep"] = rep
    return json.dumps(r)


def test_samples_per_rep_pooled_in_rep_order(tmp_path: Path) -> None:
    other = (*KEY[:-1], "Y")
    t = _table(keys=(KEY, other))
    p = _write(tmp_path / "s.jsonl", _rec((3.0, 4.0), rep=2), "", "  ", _rec((1, 2.5), rep=1),
               _rec((9.0,), model="resnet18"), _rec((7.0,), dev="Y"), _rec([], dev="Y", rep=1))
    _read_samples(t, p)
    assert list(t.rep_samples) == [KEY, other] and list(t.rep_samples[KEY]) == [2, 1]
    assert t.rep_samples[KEY][1].tolist() == [1.0, 2.5] and t.rep_samples[KEY][2].tolist() == [3.0, 4.0]
    assert t.samples[KEY].tolist() == [1.0, 2.5, 3.0, 4.0] and t.samples[KEY].dtype == np.float64
    assert t.samples[other].tolist() == [7.0] and t.rep_samples[other][1].tolist() == []


def test_samples_without_a_device_name_pair_with_the_one_row_of_their_config(tmp_path: Path) -> None:
    other = ("resnet18", *KEY[1:])
    t = _table(keys=(other, KEY))
    _read_samples(t, _write(tmp_path / "s.jsonl", _rec((5.0,), dev=None)))
    assert list(t.samples) == [KEY] and t.samples[KEY].tolist() == [5.0]
    t = _table(keys=(KEY, (*KEY[:-1], "Y")))  # the config ran on two devices: an old record is ambiguous
    _read_samples(t, _write(tmp_path / "s2.jsonl", _rec((5.0,), dev=None)))
    assert (t.samples, t.rep_samples) == ({}, {})
    t = _table(keys=(other,))
    _read_samples(t, _write(tmp_path / "s3.jsonl", _rec((5.0,), dev=None)))
    assert (t.samples, t.rep_samples) == ({}, {})


def test_kernel_samples_are_in_microseconds(tmp_path: Path) -> None:
    key = ("add", "8x8", "fp32", "", "triton", "G")
    t = _table(KERNELS, (key, (*key[:-1], "H")))
    rec = {"kernel": "add", "shape": "8x8", "dtype": "fp32", "provider": "triton"}
    _read_samples(t, _write(tmp_path / "k.jsonl", json.dumps({**rec, "device_name": "G", "samples_us": [3, 4.5],
                                                              "samples_ms": [9.0]}),
                            json.dumps({**rec, "device_name": "H", "samples_ms": [0.002, 0.25]})))
    assert t.samples[key].tolist() == [3.0, 4.5] and t.samples[(*key[:-1], "H")].tolist() == [2.0, 250.0]


def test_samples_read_as_float64_whatever_the_json_number(tmp_path: Path) -> None:
    t = _table()
    _read_samples(t, _write(tmp_path / "s.jsonl", _rec([3, 2**64])))  # an integer past int64 is still a number
    assert t.samples[KEY].dtype == np.float64 and t.samples[KEY].tolist() == [3.0, 1.8446744073709552e19]


def test_a_missing_samples_file_attaches_nothing(tmp_path: Path) -> None:
    t = _table()
    _read_samples(t, tmp_path / "none.jsonl")
    _read_samples(t, tmp_path)  # a directory is not a samples file
    assert (t.samples, t.rep_samples) == ({}, {})


@pytest.mark.parametrize("lines, end, msg", [
    ([_rec(), "{bad"], "\n", "2: not valid JSON (Expecting property name enclosed in double quotes)"),
    ([_rec(), "{bad", _rec(dev="Y")], "", "2: not valid JSON (Expecting property name enclosed in double quotes)"),
    ([_rec(), "", "{bad"], "", "3: not valid JSON (Expecting property name enclosed in double quotes) (truncated last "
                               "line?)"),
    (["", "[1, 2]"], "\n", "2: expected a JSON object"),
    ([_rec(backend="")], "\n", "1: bad config key fields (field 'backend' is missing or empty)"),
    ([_rec(None)], "\n", "1: samples must be a list of numbers"),
    ([_rec("1.0")], "\n", "1: samples must be a list of numbers"),
    ([_rec((1.0, "2"))], "\n", "1: samples must be a list of numbers"),
    ([_rec((1.0, True))], "\n", "1: samples must be a list of numbers"),
    ([_rec((1.0, 0.0))], "\n", "1: samples must be finite and positive"),
    ([_rec((0.5, -1.0))], "\n", "1: samples must be finite and positive"),
    ([_rec((1.0, float("inf")))], "\n", "1: samples must be finite and positive"),
    ([_rec((float("nan"), 1.0))], "\n", "1: samples must be finite and positive"),
    ([_rec(rep=0), _rec(), _rec(rep=0)], "\n", "2: duplicate samples for (model=basic_cnn, backend=eager, mode=infer, "
                                               "device=cpu, dtype=fp32, batch_size=1, timer=back-to-back, "
                                               "device_name=X) (first on line 1)"),
    ([_rec(rep=1), "", _rec(dev="Q", rep=3), _rec(rep=1)], "\n", "4: duplicate samples for (model=basic_cnn, "
                                                                 "backend=eager, mode=infer, device=cpu, dtype=fp32, "
                                                                 "batch_size=1, timer=back-to-back, device_name=X) "
                                                                 "rep 1 (first on line 1)"),
    ([_rec(dev="Q", rep=3), _rec(dev="Q", rep=3)], "\n", "2: duplicate samples for (model=basic_cnn, backend=eager, "
                                                         "mode=infer, device=cpu, dtype=fp32, batch_size=1, "
                                                         "timer=back-to-back, device_name=Q) rep 3 (first on line 1)"),
], ids=["json-middle", "json-middle-no-final-newline", "json-torn-last-line", "not-an-object", "bad-key", "no-list",
        "string", "text-item", "bool-item", "zero", "negative", "inf", "nan", "duplicate", "duplicate-rep",
        "duplicate-other-config"])
def test_bad_samples_name_file_and_line(tmp_path: Path, lines: list[str], end: str, msg: str) -> None:
    p = _write(tmp_path / "samples.jsonl", *lines, end=end)
    assert _bad(_read_samples, _table(), p) == f"{p}:{msg}"


def test_bad_kernel_samples(tmp_path: Path) -> None:
    rec = {"kernel": "add", "shape": "8", "dtype": "fp32", "provider": "t", "device_name": "G"}
    p = _write(tmp_path / "k.jsonl", json.dumps({**rec, "samples_us": [1.0, 0.0], "samples_ms": [1.0]}))
    assert _bad(_read_samples, _table(KERNELS, ()), p) == f"{p}:1: samples must be finite and positive"
    p = _write(tmp_path / "k2.jsonl", json.dumps({**rec, "samples_us": None, "samples_ms": [1.0]}))
    assert _bad(_read_samples, _table(KERNELS, ()), p) == f"{p}:1: samples must be a list of numbers"


# --- run directories and single CSVs ---------------------------------------------------------------------------------


ENV_HEAD = "device_name,host,torch_version,triton_version,torchvision_version,cuda_version,threads,git_sha,device"


def test_load_run_reads_every_table_its_samples_and_env(tmp_path: Path) -> None:
    d = tmp_path / "run"
    _write(d / "results.csv", M_HEAD, _mrow())
    _write(d / "samples.jsonl", _rec((1.0, 3.0)))
    _write(d / "kernels.csv", K_HEAD, "add,8x8,fp32,,triton,ok,3,2,4,5,G")
    _write(d / "kernels_samples.jsonl", json.dumps({"kernel": "add", "shape": "8x8", "dtype": "fp32",
                                                    "provider": "triton", "device_name": "G", "samples_us": [2.0]}))
    _write(d / "kernels_check.csv", C_HEAD, "add,8x8,fp32,fwd,y,pass,0.5,G")
    (d / "env.json").write_text(json.dumps({"host": "h", "threads": 2}))
    run = load_run(str(d))
    assert run.path == d and list(run.tables) == ["models", "kernels", "numerics"] and run.env == {"host": "h",
                                                                                                   "threads": 2}
    m, k, c = run.tables.values()
    assert (m.kind, k.kind, c.kind) == (MODELS, KERNELS, CHECKS)
    assert (m.path, k.path, c.path) == (d / "results.csv", d / "kernels.csv", d / "kernels_check.csv")
    assert m.samples[KEY].tolist() == [1.0, 3.0] and list(m.rows) == [KEY]
    assert k.samples[("add", "8x8", "fp32", "", "triton", "G")].tolist() == [2.0]
    assert c.samples == {} and list(c.rows) == [("add", "8x8", "fp32", "fwd", "y", "G")]


def test_load_run_of_one_csv_uses_its_directory(tmp_path: Path) -> None:
    p = _write(tmp_path / "a" / "mine.csv", K_HEAD, "add,8x8,fp32,,triton,ok,3,2,4,5,G")
    _write(tmp_path / "a" / "kernels_samples.jsonl", json.dumps({"kernel": "add", "shape": "8x8", "dtype": "fp32",
                                                                 "provider": "triton", "device_name": "G",
                                                                 "samples_ms": [0.5]}))
    (tmp_path / "a" / "env.json").write_text('{"torch_version": "2.14.1"}')
    run = load_run(p)
    assert (run.path, list(run.tables), run.env) == (p, ["kernels"], {"torch_version": "2.14.1"})
    assert run.tables["kernels"].path == p and run.tables["kernels"].kind is KERNELS
    assert run.tables["kernels"].samples[("add", "8x8", "fp32", "", "triton", "G")].tolist() == [500.0]
    assert list(load_run(_write(tmp_path / "b" / "m.csv", M_HEAD, _mrow())).tables) == ["models"]


def test_load_run_bad_paths(tmp_path: Path) -> None:
    assert _bad(load_run, tmp_path / "nope") == f"{tmp_path / 'nope'}: no such file or directory"
    (tmp_path / "empty").mkdir()
    _write(tmp_path / "empty" / "samples.jsonl", _rec())
    assert _bad(load_run, tmp_path / "empty") == (f"{tmp_path / 'empty'}: no results.csv, kernels.csv or "
                                                  "kernels_check.csv in this directory")


def test_env_from_env_json_or_the_first_row(tmp_path: Path) -> None:
    row = "G,h1,2.14.1,3.8,0.29,,2,abc,cpu"
    d = tmp_path / "r"
    _write(d / "results.csv", M_HEAD + ",host,torch_version,triton_version,torchvision_version,cuda_version,threads,"
           "git_sha", _mrow() + ",h1,2.14.1,3.8,0.29,,2,abc", _mrow(model="b") + ",h2,2.0,3.0,0.1,12.1,4,def")
    assert load_run(d).env == {"device_name": "X", "host": "h1", "torch_version": "2.14.1", "triton_version": "3.8",
                               "torchvision_version": "0.29", "threads": 2.0, "git_sha": "abc", "device": "cpu"}
    k = _read_table(KERNELS, _write(tmp_path / "k" / "kernels.csv", K_HEAD.replace("device_name", ENV_HEAD),
                                    "add,8x8,fp32,,triton,ok,3,2,4,5," + row))
    assert _read_env(tmp_path / "k", {"kernels": k}) == {"device_name": "G", "host": "h1", "torch_version": "2.14.1",
                                                         "triton_version": "3.8", "torchvision_version": "0.29",
                                                         "threads": "2", "git_sha": "abc", "device": "cpu"}
    _write(tmp_path / "k" / "kernels.csv", K_HEAD.replace("device_name", ENV_HEAD), "add,8,fp32,,t,ok,3,2,4,5," +
           row.replace(",,", ",12.4,"))
    assert load_run(tmp_path / "k").env["cuda_version"] == "12.4"
    assert _read_env(tmp_path / "none", {"kernels": _table(KERNELS, ())}) == {}
    assert _read_env(tmp_path / "none", {}) == {}


@pytest.mark.parametrize("text, msg", [('{"a": 1,\n "b": }', "2: not valid JSON (Expecting value)"),
                                       ("[1]", "1: expected a JSON object"), ('"x"', "1: expected a JSON object")])
def test_bad_env_json(tmp_path: Path, text: str, msg: str) -> None:
    (tmp_path / "env.json").write_text(text)
    assert _bad(_read_env, tmp_path, {}) == f"{tmp_path / 'env.json'}:{msg}"


# --- --match-ignore --------------------------------------------------------------------------------------------------


def test_project_drops_the_ignored_fields() -> None:
    k1, k2 = ("add", "8", "fp32", "", "triton", "G"), ("add", "8", "fp32", "", "torch", "G")
    t = Table(KERNELS, Path("k.csv"), {k1: {"_line": 2}, k2: {"_line": 5}})
    assert project(t, ()) == {k1: k1, k2: k2}
    assert project(t, ("device_name", "shape")) == {("add", "fp32", "", "triton"): k1, ("add", "fp32", "", "torch"): k2}
    assert _bad(project, t, ("provider", "device_name")) == ("k.csv:5: same key as line 2 once provider, device_name "
                                                             "is ignored; --match-ignore cannot pair these rows")
