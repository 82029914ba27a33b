"""Write params.yaml for a profile: the defaults (src/ddpm/config/groups.py) with profiles/NAME.yaml on top.

    python -m pipeline.profile default        # embedded MNIST subset on 2 CPU cores (docs/results.md)
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
# Every knob of the pipeline, grouped by stage; docs/parameters.md explains each key.
# Written by `python -m pipeline.profile {name}`; edit freely, or `dvc exp run -S key=value`.
"""


def merge(base: dict, override: dict, prefix: str = "") -> dict:
    out = dict(base)
    for key, value in (override or {}).items():
        if key not in base:
            raise ConfigError(f"profile sets unknown parameter {prefix}{key}")
        out[key] = merge(base[key], value, f"{prefix}{key}.") if isinstance(value, dict) else value
    return out


class _BlockDumper(yaml.SafeDumper):
    """Block style, one key per line (a diff of params.yaml shows the one key that changed); a list of
    plain values stays on its key's line."""

    def represent_list(self, data: list) -> yaml.Node:
        flow = all(not isinstance(item, (dict, list)) for item in data)
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_BlockDumper.add_representer(list, _BlockDumper.represent_list)


def render(name: str) -> str:
    from ddpm.config import Config

    path = PROFILES / f"{name}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in PROFILES.glob("*.yaml"))
        raise ConfigError(f"no profile {name!r}: choose one of {', '.join(names)}")
    params = merge(Config().to_dict(), yaml.safe_load(path.read_text()) or {})
    config_from_dict(params)  # validate before writing
    return HEADER.format(name=name) + yaml.dump(params, Dumper=_BlockDumper, sort_keys=False, default_flow_style=False)


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
