"""The stage entry points (`python -m pipeline.<stage>`), the Prefect flow and its deployments.

Importing the package sets the CPU kernels' environment that params.yaml's `runtime.cpu_isa` asks for
(ddpm.config.groups.CPU_KERNEL_ENV; ddpm.runtime says why): it runs before any stage module loads torch,
which reads these variables once. A params.yaml that cannot be read gets the default's; the stage then
reports what is wrong with the file. In a process that has loaded torch already (a notebook, a test)
nothing is set: half the libraries would keep their kernels and the other half take the pin, a mix that
can crash compiled code (torch.compile's C++ kernels segfaulted so).
"""

import os as _os
import sys as _sys


def _pin_cpu_kernels() -> None:
    if "torch" in _sys.modules:
        return
    from ddpm.config.groups import CPU_KERNEL_ENV, RuntimeConfig  # torch-free, unlike ddpm.runtime

    isa = RuntimeConfig.cpu_isa
    try:
        from ddpm.config.parsing import load_yaml

        with open("params.yaml") as f:
            isa = ((load_yaml(f.read()) or {}).get("runtime") or {}).get("cpu_isa", isa)
    except Exception:  # missing, unreadable or malformed: the stage's config loader says what is wrong
        pass
    _os.environ.update(CPU_KERNEL_ENV.get(isa, CPU_KERNEL_ENV[RuntimeConfig.cpu_isa]))


_pin_cpu_kernels()
