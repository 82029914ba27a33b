"""Whether the data source differs from the prepared data: what DVC cannot see by itself.

`prepare` depends on code and parameters only (dvc.yaml does not track the sources: a folder, torchvision's
downloads), so new, removed or edited images change nothing DVC hashes. This hashes exactly what `prepare`
would write (the same loader, split and checksum) and compares it with data/prepared/meta.json; both the
retraining flow (which then forces `prepare`) and the new-data check use it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from ddpm.config import load_config
from ddpm.data import describe, load_splits
from pipeline import paths


def data_checksums(root: Path) -> tuple[dict[str, str] | None, dict[str, str]]:
    """(the prepared data's SHA-256 per split from meta.json, or None; the source's, as prepare would write it)."""
    cfg = load_config(root / paths.PARAMS)
    data = cfg.data
    if not Path(data.root).is_absolute():  # data.root is relative to the project, not to this process
        data = dataclasses.replace(data, root=str(root / data.root))
    source = describe(data, cfg.seed, load_splits(data, cfg.seed))["sha256"]
    meta = root / paths.DATA_META
    prepared = json.loads(meta.read_text())["sha256"] if meta.is_file() else None
    return prepared, source


def short(checksums: dict[str, str] | None) -> str:
    """The checksums as 16 hex digits, for log lines and keys ("none": nothing prepared yet)."""
    if checksums is None:
        return "none"
    return hashlib.sha256(json.dumps(checksums, sort_keys=True).encode()).hexdigest()[:16]
