"""The import layers of pyproject.toml ([tool.importlinter]) hold.

A stage's DVC deps are every module it imports (tests/test_dag.py), so an import across a layer makes a
stage re-run for code it never uses: the config importing the champion rule re-ran all ten stages,
training included, when the gate was reworded. import-linter follows indirect imports too.
"""

import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT


def test_the_import_contracts_are_kept():
    lint = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "0 broken" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-2000:]
