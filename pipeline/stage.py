"""What every stage entry point shares: logging, the typed config, and one-line errors."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from ddpm.config import Config, load_config
from ddpm.errors import UserError
from pipeline.paths import PARAMS

log = logging.getLogger("pipeline")


def run(stage: Callable[[Config], None]) -> None:
    """Load params.yaml and run `stage`; bad input ends in one line on stderr and exit code 2."""
    logging.basicConfig(level=os.environ.get("DDPM_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    name = os.path.splitext(os.path.basename(sys.argv[0]))[0] if stage.__module__ == "__main__" \
        else stage.__module__.rsplit(".", 1)[-1]
    try:
        stage(load_config(PARAMS))
    except UserError as exc:
        print(f"error: {name}: {exc}", file=sys.stderr)
        sys.exit(2)
    except FloatingPointError as exc:
        print(f"error: {name}: {exc}", file=sys.stderr)
        sys.exit(3)
    except KeyboardInterrupt:
        print(f"error: {name}: interrupted; nothing half-written was kept", file=sys.stderr)
        sys.exit(130)


def progress_enabled() -> bool:
    """Progress bars unless DDPM_PROGRESS=0 (CI logs stay readable)."""
    return os.environ.get("DDPM_PROGRESS", "1") != "0"
