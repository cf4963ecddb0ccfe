"""Build mmgdino and its one extension, mmgdino._C.

Switches (environment variables):
  MMGDINO_FORCE_CPU=1      build the C++ CPU kernels only, even where CUDA could be built
  MMGDINO_FORCE_CUDA=1     fail unless the CUDA kernels are built (e.g. in a GPU-less build container)
  TORCH_CUDA_ARCH_LIST     CUDA architectures; default "8.0;8.6;8.9;9.0+PTX" plus any GPU of the building machine
                           that list would not run on (e.g. 7.5 for a T4)
  MAX_JOBS                 parallel compile jobs (ninja)
  MMGDINO_SKIP_EXTENSION=1 install the Python package only (every op then runs on its torch backend)

Build with `pip install --no-build-isolation .` so the extension matches the torch already installed.
"""

import glob
import importlib.util
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
# One C++ standard for the extension, CI's nvcc compile check (.ci/run) and the emulated builds (tests/).
CXX_STANDARD = "-std=c++20"


def _load_cuda_arch():
    # mmgdino/_cuda_arch.py is plain Python; importing the mmgdino package here would need the extension.
    spec = importlib.util.spec_from_file_location("_mmgdino_cuda_arch", os.path.join(ROOT, "mmgdino", "_cuda_arch.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cuda_arch = _load_cuda_arch()


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _choose_cuda(torch, cuda_home):
    """Returns (build_cuda, reason)."""
    force_cpu, force_cuda = _flag("MMGDINO_FORCE_CPU"), _flag("MMGDINO_FORCE_CUDA")
    if force_cpu and force_cuda:
        sys.exit("mmgdino: MMGDINO_FORCE_CPU and MMGDINO_FORCE_CUDA are both set; choose one")
    if force_cpu:
        return False, "MMGDINO_FORCE_CPU=1"
    problems = []
    if torch.version.cuda is None:
        problems.append(f"torch {torch.__version__} is a CPU build")
    if cuda_home is None:
        problems.append("nvcc not found (set CUDA_HOME)")
    if problems:
        if force_cuda:
            sys.exit("mmgdino: MMGDINO_FORCE_CUDA=1 but " + "; ".join(problems))
        return False, "; ".join(problems)
    return True, "MMGDINO_FORCE_CUDA=1" if force_cuda else f"torch CUDA {torch.version.cuda} and nvcc found"


def _extensions():
    if _flag("MMGDINO_SKIP_EXTENSION"):
        print("mmgdino build: MMGDINO_SKIP_EXTENSION=1, Python package only", flush=True)
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    build_cuda, reason = _choose_cuda(torch, CUDA_HOME)
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    cxx_flags = ["-O3", CXX_STANDARD, "-fopenmp", "-Wno-psabi"]
    # -fopenmp matters: ATen's parallel_for is a header template that parallelizes only under _OPENMP.
    extra = {"cxx": cxx_flags}
    define_macros = []
    if build_cuda:
        if "TORCH_CUDA_ARCH_LIST" not in os.environ:
            local = [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]
            os.environ["TORCH_CUDA_ARCH_LIST"] = cuda_arch.with_local_gpus(cuda_arch.DEFAULT_ARCH_LIST, local)
        sources += sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))
        define_macros.append(("MMGDINO_WITH_CUDA", None))
        # Recorded in the binary for `mmgdino info` and for the "not built for this GPU" error; "_" separates
        # the entries because ";" and quotes would not survive the shell of the ninja build.
        arch_tokens = os.environ["TORCH_CUDA_ARCH_LIST"].replace(" ", ";").strip(";").replace(";", "_")
        define_macros.append(("MMGDINO_CUDA_ARCH_LIST", arch_tokens))
        extra["nvcc"] = ["-O3", CXX_STANDARD, "--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr"]
        ext_type = CUDAExtension
    else:
        ext_type = CppExtension
    print(
        "mmgdino build configuration:\n"
        f"  torch          {torch.__version__} (CUDA {torch.version.cuda})\n"
        f"  CUDA kernels   {'yes' if build_cuda else 'no'} ({reason})\n"
        f"  CUDA_HOME      {CUDA_HOME}\n"
        f"  arch list      {os.environ.get('TORCH_CUDA_ARCH_LIST', '-') if build_cuda else '-'}\n"
        f"  MAX_JOBS       {os.environ.get('MAX_JOBS', 'ninja default')}\n"
        f"  sources        {len(sources)} files",
        flush=True,
    )
    ext = ext_type(
        name="mmgdino._C",
        sources=sources,
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    packages=["mmgdino", "mmgdino.ops", "mmgdino.modeling", "mmgdino.bench", "mmgdino.kernels"],
    # The Triton sources sit in top-level kernels/ but install only as mmgdino.kernels: a top-level package
    # named `kernels` would shadow Hugging Face's hub-kernel library, which transformers probes for.
    package_dir={"mmgdino": "mmgdino", "mmgdino.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
