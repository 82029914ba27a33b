"""The stage entry points (`python -m pipeline.<stage>`), the Prefect flow and its deployments.

Importing the package pins the CPU kernels to AVX2 when params.yaml asks for it
(`runtime.cpu_isa: avx2`, the default; ddpm.runtime says why): it runs before any stage module
loads torch, which reads these variables once. A params.yaml that cannot be read leaves the pin
on; the stage then reports what is wrong with the file. In a process that has loaded torch already
(a notebook, a test) nothing is set: half the libraries would keep their kernels and the other half
take the pin, a mix that can crash compiled code (torch.compile's C++ kernels segfaulted so).
"""

import os as _os
import sys as _sys


def _pin_cpu_kernels() -> None:
    if "torch" in _sys.modules:
        return
    try:
        from ddpm.config.parsing import load_yaml

        with open("params.yaml") as f:
            isa = ((load_yaml(f.read()) or {}).get("runtime") or {}).get("cpu_isa", "avx2")
    except Exception:  # missing, unreadable or malformed: the stage's config loader says what is wrong
        isa = "avx2"
    if isa != "native":
        from ddpm.config.groups import PORTABLE_CPU_ENV  # torch-free, unlike ddpm.runtime

        _os.environ.update(PORTABLE_CPU_ENV)


_pin_cpu_kernels()
