"""Build of contnet and its extension contnet._C.

The CPU kernels are always built. The CUDA kernels are built whenever torch is a CUDA
build and a CUDA toolkit is found; no GPU is needed to compile them. Environment:

- ``CUDA_HOME``: the toolkit root (found from ``nvcc`` and the usual places otherwise).
- ``CONTNET_CUDA=0`` skips the CUDA kernels; ``CONTNET_CUDA=1`` makes a missing toolkit an
  error instead of a CPU-only build.
- ``TORCH_CUDA_ARCH_LIST``: target architectures; defaults to the visible GPUs' or, with
  none visible, ``9.0`` (Hopper).
"""

import glob
import os
import shutil
import subprocess
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _is_toolkit(root):
    return (
        bool(root)
        and os.path.isfile(os.path.join(root, "bin", "nvcc"))
        and os.path.isfile(os.path.join(root, "include", "cuda_runtime.h"))
    )


def _find_cuda_home():
    """The CUDA toolkit root. ``nvcc`` on PATH may be a wrapper script outside the toolkit,
    so its parent folder is checked, then asked, then the usual install places tried."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
        try:
            out = subprocess.run(
                [nvcc, "-v", "--dryrun", "-x", "cu", os.devnull],
                capture_output=True,
                text=True,
                timeout=30,
            )
            for line in (out.stdout + out.stderr).splitlines():
                if "TOP=" in line:
                    candidates.append(line.split("TOP=", 1)[1].strip())
        except (OSError, subprocess.SubprocessError):
            pass
    candidates.append("/usr/local/cuda")
    candidates += sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for root in candidates:
        if _is_toolkit(root):
            return os.path.realpath(root)
    return None


import torch  # noqa: E402

want_cuda = os.environ.get("CONTNET_CUDA", "auto")
cuda_home = _find_cuda_home() if torch.version.cuda and want_cuda != "0" else None
if want_cuda == "1" and cuda_home is None:
    raise RuntimeError(
        "CONTNET_CUDA=1 but no CUDA build of torch with a CUDA toolkit was found "
        f"(torch.version.cuda={torch.version.cuda}); set CUDA_HOME to the toolkit root"
    )
if cuda_home:
    # torch.utils.cpp_extension reads CUDA_HOME when it is imported.
    os.environ["CUDA_HOME"] = cuda_home
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"

from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _sources(pattern):
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))


def _shared_cxx_runtime():
    """Linker arguments that tie the extension to the shared C++ runtime (libstdc++.so.6),
    the one Python and torch have loaded, by its path. A build that takes the static archive
    instead gives the extension a second copy of the runtime, whose locale state is not the
    loaded one's: reading a number from a stream, or building an error message, then calls
    into the wrong facet and crashes. Linux only."""
    if not sys.platform.startswith("linux"):
        return []
    try:
        out = subprocess.run(
            [os.environ.get("CXX", "c++"), "-print-file-name=libstdc++.so.6"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return []
    return [out] if os.path.isabs(out) and os.path.isfile(out) else []


sources = _sources("csrc/*.cpp") + _sources("csrc/autograd/*.cpp") + _sources("csrc/cpu/*.cpp")
# -fno-trapping-math: floating-point exceptions are never observed, so selects such as
# relu's gradient (z > 0 ? g : 0) vectorise; results are unchanged (no reassociation).
extra = {"cxx": ["-O3", "-fno-trapping-math"]}
if torch.backends.openmp.is_available() and sys.platform.startswith("linux"):
    # at::parallel_for is an inline template over `#pragma omp parallel` in a torch built with
    # OpenMP: without -fopenmp here the kernels that call it would run on one thread. Compile
    # flag only: the OpenMP calls resolve at load time to the runtime torch ships and has
    # loaded (linking -fopenmp would pull in the system's libgomp, a second thread pool).
    # Elsewhere (Apple clang takes no -fopenmp) those kernels stay on one thread.
    extra["cxx"].append("-fopenmp")
# csrc/include: the shared headers; contnet/ops: the activation table (activations.def),
# which the Python package reads too
include_dirs = [os.path.join(HERE, "csrc", "include"), os.path.join(HERE, "contnet", "ops")]
if cuda_home:
    extension = CUDAExtension
    sources += _sources("csrc/cuda/*.cu")
    extra["nvcc"] = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
else:
    extension = CppExtension

setup(
    ext_modules=[
        extension(
            "contnet._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args=extra,
            extra_link_args=_shared_cxx_runtime(),
        )
    ],
    cmdclass={"build_ext": BuildExtension},
)
