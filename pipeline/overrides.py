"""params.yaml overrides as `dvc exp run -S` takes them: parsed by DVC, checked by load_config, written atomically."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ddpm.config import load_config
from ddpm.errors import ConfigError
from pipeline import paths


@contextmanager
def _overridden_params(root: Path, overrides: list[str]) -> Iterator[Path]:
    """A copy of params.yaml with `overrides` applied by DVC's own `-S` code and validated by
    `load_config`; yields its path (in .dvc/tmp; params.yaml itself without overrides), removed afterwards."""
    from dvc.utils.hydra import apply_overrides, to_hydra_overrides

    upserts = []
    for item in overrides:
        try:
            (parsed,) = to_hydra_overrides([item])
        except Exception:  # hydra's OverrideParseException, or more than one override in the string
            raise ConfigError(f"override {item!r} is not key=value (as `dvc exp run -S` takes it)") from None
        if parsed.is_sweep_override():
            raise ConfigError(f"override {item!r} is a sweep: a flow run takes one value per key "
                              "(`dvc exp run --queue -S` queues sweeps)")
        if parsed.is_delete():
            raise ConfigError(f"override {item!r} deletes a parameter: set a value instead")
        # DVC's -S only changes existing keys; '++' lets an unknown key through to load_config,
        # whose error names it and the closest valid key.
        upserts.append("++" + item.lstrip("+"))
    params = root / paths.PARAMS
    if not upserts:
        load_config(params)
        yield params
        return
    tmp_dir = root / ".dvc" / "tmp"  # DVC's scratch folder: a killed run leaves no stray file in the project
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="params.", suffix=".yaml", dir=tmp_dir)
    os.close(fd)
    tmp = Path(name)
    try:
        if not params.is_file():
            load_config(params)  # its one-line "not found" error
        tmp.write_bytes(params.read_bytes())
        shutil.copymode(params, tmp)
        try:
            apply_overrides(tmp, upserts)
        except Exception as exc:  # DVC's YAMLFileCorruptedError and the like
            raise ConfigError(f"{params} cannot take the overrides ({exc.__class__.__name__}): "
                              "fix its syntax") from None
        load_config(tmp)  # unknown keys, wrong types, out-of-range values
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def check_overrides(root: Path, overrides: list[str]) -> None:
    """Raise ConfigError (one line) unless params.yaml with `overrides` is a valid configuration."""
    with _overridden_params(root, overrides):
        pass


def set_params(root: Path, overrides: list[str]) -> None:
    """Write `overrides` into params.yaml (atomically: rename of a validated copy)."""
    if overrides:
        with _overridden_params(root, overrides) as tmp:
            os.replace(tmp, root / paths.PARAMS)
