"""A no-op `dvc repro` beside DVC's own floor: what the project adds to DVC when nothing has changed.

Run where `make repro` has finished (every stage up to date; `register` only asks the registry):

    .venv/bin/python -m benchmarks.noop_repro --runs 25

Each round times, one after another: `dvc repro` in the workspace, `dvc repro` of a one-stage DAG made in
a temporary folder (DVC's floor: its start-up and one stage checked), `dvc status` in the workspace and
the register stage's question alone (`python -m pipeline.register`). The VM's speed drifts within
minutes; rounds interleave the four so that each round's ratio of no-op to floor compares like with like.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

from benchmarks import harness

BIN = Path(sys.executable).parent  # the venv's: stages run `python`, as under `make repro`
DVC = str(BIN / "dvc")
TARGET_S = 1.5  # issue 15's bound for the no-op
ALWAYS_CHANGED = "registry/dvc.yaml:register"  # what `dvc status` lists when nothing else has changed
ENV = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def run(cmd: list[str], cwd: Path) -> None:
    done = subprocess.run(cmd, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        sys.exit(f"error: `{' '.join(cmd)}` failed in {cwd} (exit {done.returncode}): {last}")


def make_one_stage_dag(folder: Path) -> None:
    (folder / "in.txt").write_text("a\n")
    for cmd in (["git", "init", "-q"], [DVC, "init", "-q"],
                [DVC, "stage", "add", "-q", "-n", "copy", "-d", "in.txt", "-o", "out.txt", "cp in.txt out.txt"]):
        subprocess.run(cmd, cwd=folder, env=ENV, check=True, stdout=subprocess.DEVNULL)
    run([DVC, "repro"], folder)


def main() -> None:
    ap = harness.parser(__doc__)
    ap.add_argument("--runs", type=int, default=25)
    ap.add_argument("--workspace", type=Path, default=Path.cwd())
    args = ap.parse_args()
    results = harness.Results(Path(__file__).stem, args)

    # Checked before anything runs: in a workspace that is not up to date, `dvc repro` would run the DAG.
    status = subprocess.run([DVC, "status", "--json"], cwd=args.workspace, env=ENV, capture_output=True, text=True)
    changed = sorted(json.loads(status.stdout or "{}")) if status.returncode == 0 else ["dvc status failed"]
    if changed != [ALWAYS_CHANGED]:
        listed = ", ".join(changed) or "no register stage"
        sys.exit(f"error: {args.workspace} is not an up-to-date workspace of this project ({listed}): "
                 "run `make repro` there first")
    run([DVC, "repro"], args.workspace)  # warm-up: the file cache, DVC's state database

    with tempfile.TemporaryDirectory() as tmp:
        floor = Path(tmp)
        make_one_stage_dag(floor)
        commands = {"dvc repro (no-op)": ([DVC, "repro"], args.workspace),
                    "dvc repro, one-stage DAG": ([DVC, "repro"], floor),
                    "dvc status": ([DVC, "status"], args.workspace),
                    "register's question": ([sys.executable, "-m", "pipeline.register"], args.workspace)}
        times: dict[str, list[float]] = {name: [] for name in commands}
        print(f"{args.runs} rounds of {len(commands)} commands, interleaved, in {args.workspace} ...", flush=True)
        for _, name in harness.rounds(commands, args.runs, alternate=False):
            times[name].append(harness.elapsed(partial(run, *commands[name])))

    for name, ts in times.items():
        s = harness.spread(ts)
        print(f"{name:>26}: median {s['median']:.2f} s ({s['min']:.2f}-{s['max']:.2f})")
        results.add(command=name, seconds=s, runs_s=ts)
    ratios = harness.paired(times["dvc repro (no-op)"], times["dvc repro, one-stage DAG"])
    s = harness.spread(ratios)
    print(f"{'no-op / one-stage DAG':>26}: median {s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})")
    share = sum(t <= TARGET_S for t in times["dvc repro (no-op)"])
    print(f"{f'no-op runs within {TARGET_S} s':>26}: {share} of {args.runs}")
    results.add(command="no-op / one-stage DAG", ratio=s, ratios=ratios, within_target=share, target_s=TARGET_S)


if __name__ == "__main__":
    main()
