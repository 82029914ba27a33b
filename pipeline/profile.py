"""Write params.yaml for a profile: the defaults (src/ddpm/config/groups.py) with profiles/NAME.yaml on top.

    python -m pipeline.profile default        # embedded MNIST subset on 2 CPU cores (README, "Measured")
    python -m pipeline.profile tiny           # seconds; what the integration tests run
    python -m pipeline.profile mnist-cond     # the default, class-conditional with guidance
    python -m pipeline.profile cifar10-gpu    # the DDPM paper's 35.7M CIFAR-10 model, on a GPU
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from ddpm.config import config_from_dict
from ddpm.errors import ConfigError
from ddpm.io import write_text
from pipeline.paths import PARAMS

PROFILES = Path(__file__).resolve().parent.parent / "profiles"
HEADER = """\
# Every knob of the pipeline, grouped by stage; README.md ("Parameters") explains each group.
# Written by `python -m pipeline.profile {name}`; edit freely, or `dvc exp run -S key=value`.
"""


def merge(base: dict, override: dict, prefix: str = "") -> dict:
    out = dict(base)
    for key, value in (override or {}).items():
        if key not in base:
            raise ConfigError(f"profile sets unknown parameter {prefix}{key}")
        out[key] = merge(base[key], value, f"{prefix}{key}.") if isinstance(value, dict) else value
    return out


def render(name: str) -> str:
    from ddpm.config import Config

    path = PROFILES / f"{name}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in PROFILES.glob("*.yaml"))
        raise ConfigError(f"no profile {name!r}: choose one of {', '.join(names)}")
    params = merge(Config().to_dict(), yaml.safe_load(path.read_text()) or {})
    config_from_dict(params)  # validate before writing
    return HEADER.format(name=name) + yaml.safe_dump(params, sort_keys=False, default_flow_style=None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="profile name (a file in profiles/)")
    parser.add_argument("--output", type=Path, default=PARAMS, help="where to write (default: params.yaml)")
    args = parser.parse_args(argv)
    try:
        write_text(args.output, render(args.name))
    except ConfigError as exc:
        print(f"error: profile: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {args.output} from profile {args.name}")


if __name__ == "__main__":
    main()
