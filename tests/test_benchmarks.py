"""benchmarks/: every module imports, the harness's pure parts compute what they say, every `--help` exits 0.

The benchmarks themselves take minutes to hours (docs/benchmarks.md): nothing here measures anything.
"""

import argparse
import importlib
import json
import pkgutil
import subprocess
import sys

import pytest
import torch  # before the benchmarks: time_to_quality sets the CPU kernels only in a process without torch

import benchmarks
from benchmarks import harness
from tests.helpers import ROOT

MODULES = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__))
SCRIPTS = [name for name in MODULES if name != "harness"]


def test_every_benchmarks_module_imports():
    assert len(SCRIPTS) >= 8
    for name in MODULES:
        importlib.import_module(f"benchmarks.{name}")


def test_jsonl_rows_name_the_benchmark_machine_and_arguments_beside_the_numbers(tmp_path):
    args = argparse.Namespace(jsonl=tmp_path / "out" / "rows.jsonl", steps=3, workspace=tmp_path)
    results = harness.Results("demo", args)
    results.add(model="ours", images_per_s=12.5, rounds=[1.0, 2.0])
    results.add(model="peer", images_per_s=None)
    rows = [json.loads(line) for line in args.jsonl.read_text().splitlines()]
    assert [row["model"] for row in rows] == ["ours", "peer"]
    for row in rows:
        assert row["benchmark"] == "demo"
        assert row["machine"]["cpu"] and row["machine"]["device"] == "cpu"
        assert row["machine"]["torch"] == torch.__version__
        assert row["args"] == {"jsonl": str(args.jsonl), "steps": 3, "workspace": str(tmp_path)}
    assert rows[0]["images_per_s"] == 12.5 and rows[0]["rounds"] == [1.0, 2.0]
    with pytest.raises(ValueError, match="machine"):  # the harness's own fields are not a row's to set
        results.add(machine="mine")


def test_without_jsonl_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    harness.Results("demo", argparse.Namespace(jsonl=None)).add(images_per_s=1.0)
    assert not list(tmp_path.iterdir())


def test_paired_ratios_and_spread_against_a_hand_computation():
    ours, peer = [10.0, 12.0, 9.0, 11.0, 30.0], [5.0, 6.0, 4.5, 5.5, 10.0]
    assert harness.paired(ours, peer) == [2.0, 2.0, 2.0, 2.0, 3.0]
    assert harness.spread([2.0, 2.0, 2.0, 2.0, 3.0]) == {"median": 2.0, "min": 2.0, "max": 3.0, "q1": 2.0, "q3": 2.5}
    # quartiles of 1, 2, 3, 4 at positions (n + 1) p: 1.25 and 3.75
    assert harness.spread([4.0, 1.0, 3.0, 2.0]) == {"median": 2.5, "min": 1.0, "max": 4.0, "q1": 1.25, "q3": 3.75}
    assert harness.spread([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0}  # quartiles from 4 rounds on
    with pytest.raises(ValueError, match="as many rounds"):
        harness.paired([1.0], [1.0, 2.0])


def test_rounds_reverse_the_order_every_other_round_unless_told():
    assert list(harness.rounds({"a": 0, "b": 0}, 3)) == [(0, "a"), (0, "b"), (1, "b"), (1, "a"), (2, "a"), (2, "b")]
    assert list(harness.rounds(["a", "b"], 2, alternate=False)) == [(0, "a"), (0, "b"), (1, "a"), (1, "b")]


def test_overrides_are_parsed_and_checked_as_the_flow_does():
    before = (ROOT / "params.yaml").read_bytes()
    cfg = harness.config("default", ["train.steps=5", "train.lr=2e-3", "model.channel_mult=[1,2,2]"])
    assert (cfg.train.steps, cfg.train.lr, cfg.model.channel_mult) == (5, 0.002, (1, 2, 2))
    with pytest.raises(SystemExit, match="did you mean train.lr"):
        harness.config("default", ["train.lrr=1"])
    assert (ROOT / "params.yaml").read_bytes() == before


def test_every_benchmark_prints_its_help():
    procs = {name: subprocess.Popen([sys.executable, "-m", f"benchmarks.{name}", "--help"], cwd=ROOT,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in SCRIPTS}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"python -m benchmarks.{name} --help: {err[-2000:]}"
        assert f"python -m benchmarks.{name}" in out and "--jsonl PATH" in out
