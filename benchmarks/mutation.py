"""Mutation run: each mutant of benchmarks/mutants.py against the fast tests that should kill it.

Every mutant is one exact edit (file, old text, new text) to a copy of the committed tree (`git archive HEAD`
into a temporary folder; the working tree is never written), then the mutant's own tests run there
(pytest -x, with PYTHONPATH at the copy, checked to import the copy's ddpm). A test that fails kills the
mutant; a mutant whose tests all pass survived. An old text that is not found exactly once is a stale
mutant: an error, so that the list follows the code when it moves. Exits non-zero on any survivor, stale
mutant or error. Each mutant prints KILLED / SURVIVED with its time, then a summary.

    python -m benchmarks.mutation                      # every mutant, one at a time
    python -m benchmarks.mutation --only ema_weight_swapped --only kid_subset_size
    python -m benchmarks.mutation --with tests/test_new.py   # overlay uncommitted files onto the copy
"""

from __future__ import annotations

import os
import queue
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks import harness
from benchmarks.mutants import MUTANTS, Mutant

ROOT = Path(__file__).resolve().parent.parent


def copy_tree(dest: Path, overlays: list[str]) -> Path:
    """The committed tree (HEAD) in `dest`, with the working tree's `overlays` files copied over it."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    for rel in overlays:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest / rel)
    return dest


def env_for(copy: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=f"{copy / 'src'}{os.pathsep}{copy}", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", DDPM_PROGRESS="0", DVC_NO_ANALYTICS="1", PYTHONDONTWRITEBYTECODE="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def check_imports_copy(copy: Path) -> None:
    """The venv's editable install points at the working tree: the copy must win on sys.path."""
    code = "import ddpm, tests, benchmarks, sys; print(ddpm.__file__); print(tests.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=copy, env=env_for(copy), capture_output=True,
                         text=True, check=True).stdout.split()
    if not all(Path(p).resolve().is_relative_to(copy.resolve()) for p in out):
        raise SystemExit(f"the copy at {copy} does not import its own code: {out}")


def stale(copy: Path, mutant: Mutant) -> str | None:
    """Why `mutant` cannot be applied to the tree at `copy`, or None."""
    path = copy / mutant.file
    if not path.is_file():
        return f"{mutant.file} is not in the committed tree"
    found = path.read_text().count(mutant.old)
    return None if found == 1 else f"its old text occurs {found} times in {mutant.file} (expected once)"


def pytest(copy: Path, args: list[str], timeout: float) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "--no-header", *args]
    try:
        proc = subprocess.run(cmd, cwd=copy, env=env_for(copy), capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        return -1, "timed out"
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def baseline_runs(mutants: list[Mutant]) -> list[list[str]]:
    """Every mutant's tests in a few pytest runs: the plain paths in one, each path taken with -k in one of its
    own with the expressions or-ed (pytest's -k applies to every path of a run)."""
    plain: set[str] = set()
    keyed: dict[str, set[str]] = {}
    for m in mutants:
        tokens = shlex.split(m.tests)
        exprs = [tokens[i + 1] for i, tok in enumerate(tokens) if tok == "-k"]
        paths = [tok for i, tok in enumerate(tokens) if tok != "-k" and (i == 0 or tokens[i - 1] != "-k")]
        for path in paths:
            if exprs:
                keyed.setdefault(path, set()).update(exprs)
            else:
                plain.add(path)
    runs = [sorted(plain)] if plain else []
    return runs + [[path, "-k", " or ".join(f"({e})" for e in sorted(exprs))] for path, exprs in sorted(keyed.items())]


def run_mutant(copy: Path, mutant: Mutant, timeout: float) -> tuple[str, float, str]:
    """(status, seconds, detail): KILLED, SURVIVED or ERROR (pytest could not run the named tests)."""
    path = copy / mutant.file
    original = path.read_text()
    path.write_text(original.replace(mutant.old, mutant.new, 1))
    t0 = time.perf_counter()
    try:
        rc, out = pytest(copy, shlex.split(mutant.tests), timeout)
    finally:
        path.write_text(original)
    seconds = time.perf_counter() - t0
    last = out.splitlines()[-1] if out else ""
    if rc == 0:
        return "SURVIVED", seconds, last
    if rc in (1, 2, -1):  # failed, or a collection error the mutant caused, or hung
        return "KILLED", seconds, last
    return "ERROR", seconds, f"pytest exit {rc}: {last}"  # 4: usage (a test id not found), 5: nothing collected


def main() -> None:
    ap = harness.parser(__doc__)
    ap.add_argument("--only", action="append", default=[], metavar="NAME", help="run this mutant (repeatable)")
    ap.add_argument("-j", "--jobs", type=int, default=1, help="mutants at a time, each in its own copy")
    ap.add_argument("--with", dest="overlays", action="append", default=[], metavar="PATH",
                    help="copy this working-tree file over the committed one in the copy (repeatable)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant before it counts as killed")
    ap.add_argument("--baseline", action="store_true", help="first run every selected test on the unmutated copy")
    ap.add_argument("--list", action="store_true", help="print the mutants and exit")
    ap.add_argument("--check", action="store_true", help="only check that every old text is found (no tests)")
    args = ap.parse_args()
    names = [m.name for m in MUTANTS]
    if len(set(names)) != len(names):
        raise SystemExit("two mutants share a name in benchmarks/mutants.py")
    unknown = sorted(set(args.only) - set(names))
    if unknown:
        raise SystemExit(f"no mutant named {', '.join(unknown)}: see --list")
    selected = [m for m in MUTANTS if not args.only or m.name in args.only]
    if args.list:
        for m in selected:
            print(f"{m.name:32s} {m.file:34s} {m.why}")
        return
    results = harness.Results("mutation", args)
    scratch = Path(tempfile.mkdtemp(prefix="ddpm-mutation-"))
    t_start = time.perf_counter()
    counts: dict[str, int] = {"KILLED": 0, "SURVIVED": 0, "STALE": 0, "ERROR": 0}
    try:
        copies = [copy_tree(scratch / f"tree{i}", args.overlays) for i in range(max(1, args.jobs))]
        check_imports_copy(copies[0])
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, check=False,
                                text=True).stdout.strip()
        print(f"{len(selected)} mutants of commit {commit} in {scratch} ({len(copies)} at a time)", flush=True)
        runnable = []
        for m in selected:
            why = stale(copies[0], m)
            if why:
                counts["STALE"] += 1
                print(f"STALE      {'':>7s}  {m.name}: {why}", flush=True)
                results.add(mutant=m.name, file=m.file, status="STALE", seconds=None)
            else:
                runnable.append(m)
        if args.check:
            runnable = []
        if args.baseline and runnable:
            for tests in baseline_runs(runnable):
                rc, out = pytest(copies[0], tests, args.timeout * 4)
                print(f"baseline: {'pass' if rc == 0 else 'FAILS'} {' '.join(tests)[:100]} "
                      f"({out.splitlines()[-1] if out else ''})", flush=True)
                if rc != 0:
                    raise SystemExit(f"the unmutated tests fail: a kill would mean nothing\n{out[-3000:]}")
        free: queue.Queue[Path] = queue.Queue()
        for c in copies:
            free.put(c)

        def one(m: Mutant) -> None:
            copy = free.get()
            try:
                status, seconds, detail = run_mutant(copy, m, args.timeout)
            finally:
                free.put(copy)
            counts[status] += 1
            print(f"{status:9s} {seconds:6.1f}s  {m.name}  ({m.file})" +
                  ("" if status == "KILLED" else f"\n           {m.why}\n           {detail}"), flush=True)
            results.add(mutant=m.name, file=m.file, status=status, seconds=round(seconds, 2))

        with ThreadPoolExecutor(max_workers=len(copies)) as pool:
            list(pool.map(one, runnable))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    total = time.perf_counter() - t_start
    print(f"\n{len(selected)} mutants: {counts['KILLED']} killed, {counts['SURVIVED']} survived, "
          f"{counts['STALE']} stale, {counts['ERROR']} errors in {total / 60:.1f} min", flush=True)
    if counts["SURVIVED"] or counts["STALE"] or counts["ERROR"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
