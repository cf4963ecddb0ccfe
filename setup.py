"""Build mmgdino and its one extension, mmgdino._C.

Switches (environment variables):
  MMGDINO_FORCE_CPU=1      build the C++ CPU kernels only, even where CUDA could be built
  MMGDINO_FORCE_CUDA=1     fail unless the CUDA kernels are built (e.g. in a GPU-less build container)
  TORCH_CUDA_ARCH_LIST     CUDA architectures; default "8.0;8.6;8.9;9.0+PTX" plus any GPU of the building machine
                           that list would not run on (e.g. 7.5 for a T4)
  MAX_JOBS                 parallel compile jobs (ninja)
  MMGDINO_SKIP_EXTENSION=1 install the Python package only (every op then runs on its torch backend)
  CUDA_HOME / CUDA_PATH    the CUDA toolkit; otherwise found from nvcc itself, /usr/local/cuda or pip's nvidia
                           packages (torch's own guess fails when `nvcc` on PATH is a wrapper script)

The extension uses LibTorch's stable ABI and CPython's limited API only: one build (a cp310-abi3 wheel) runs with
every torch from mmgdino._cuda_build.TORCH_TARGET on and every CPython from 3.10 on. Build it with
`pip wheel --no-build-isolation --no-deps .` (or `pip install --no-build-isolation .`) against any such torch; a CUDA
build needs torch's CUDA build and a CUDA toolkit of the same major version.
"""

import glob
import importlib.util
import json
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _load_cuda_build():
    # mmgdino/_cuda_build.py is plain Python; importing the mmgdino package here would need the extension.
    spec = importlib.util.spec_from_file_location(
        "_mmgdino_cuda_build", os.path.join(ROOT, "mmgdino", "_cuda_build.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cuda_build = _load_cuda_build()
CXX_STANDARD = cuda_build.CXX_STANDARD
TORCH_TARGET_RELEASE = "{}.{}".format(*cuda_build.TORCH_TARGET)
PYTHON_TARGET_RELEASE = "{}.{}".format(*cuda_build.PYTHON_TARGET)


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _choose_cuda(torch):
    """Returns (build_cuda, reason, toolkit root or None); exits with one line when the switches cannot be met."""
    force_cpu, force_cuda = _flag("MMGDINO_FORCE_CPU"), _flag("MMGDINO_FORCE_CUDA")
    if force_cpu and force_cuda:
        sys.exit("mmgdino: MMGDINO_FORCE_CPU and MMGDINO_FORCE_CUDA are both set; choose one")
    if force_cpu:
        return False, "MMGDINO_FORCE_CPU=1", None
    if torch.version.cuda is None:
        if force_cuda:
            sys.exit(f"mmgdino: MMGDINO_FORCE_CUDA=1 but torch {torch.__version__} is a CPU build")
        return False, f"torch {torch.__version__} is a CPU build", None
    root, tried = cuda_build.find_cuda_toolkit()
    if root is None:
        why = "no CUDA toolkit found (tried " + "; ".join(tried) + ")"
        if force_cuda:
            sys.exit("mmgdino: MMGDINO_FORCE_CUDA=1 but " + why)
        print(
            f"mmgdino build WARNING: torch {torch.__version__} has CUDA but {why}; building the CPU kernels only "
            "(set CUDA_HOME to a CUDA toolkit to build the CUDA kernels)",
            flush=True,
        )
        return False, why, None
    # torch.utils.cpp_extension reads CUDA_HOME when imported, which happens after this.
    os.environ["CUDA_HOME"] = root
    return True, "MMGDINO_FORCE_CUDA=1" if force_cuda else f"torch CUDA {torch.version.cuda}, toolkit found", root


def _extensions():
    if _flag("MMGDINO_SKIP_EXTENSION"):
        print("mmgdino build: MMGDINO_SKIP_EXTENSION=1, Python package only", flush=True)
        return [], {}
    import torch

    build_cuda, reason, cuda_home = _choose_cuda(torch)
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    # No -fopenmp: the kernels parallelize through torch's own thread pool (the stable parallel_for). Hidden
    # visibility: the module exports PyInit__C only (and stable::Tensor, which our structs hold, is hidden).
    cxx_flags = ["-O3", CXX_STANDARD, "-Wno-psabi", "-fvisibility=hidden"]
    extra = {"cxx": cxx_flags}
    define_macros = [cuda_build.torch_target_macro()]
    if build_cuda:
        if "TORCH_CUDA_ARCH_LIST" not in os.environ:
            local = [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]
            os.environ["TORCH_CUDA_ARCH_LIST"] = cuda_build.with_local_gpus(cuda_build.DEFAULT_ARCH_LIST, local)
        sources += sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))
        define_macros.append(("MMGDINO_WITH_CUDA", None))
        define_macros.append(("USE_CUDA", None))  # declares the CUDA shims of the stable ABI (the current stream)
        # Recorded in the binary for `mmgdino info` and for the "not built for this GPU" error; "_" separates
        # the entries because ";" and quotes would not survive the shell of the ninja build.
        arch_tokens = os.environ["TORCH_CUDA_ARCH_LIST"].replace(" ", ";").strip(";").replace(";", "_")
        define_macros.append(("MMGDINO_CUDA_ARCH_LIST", arch_tokens))
        extra["nvcc"] = list(cuda_build.NVCC_FLAGS)
        ext_type = CUDAExtension
    else:
        ext_type = CppExtension
    print(
        "mmgdino build configuration:\n"
        f"  torch          {torch.__version__} (CUDA {torch.version.cuda}); the build runs with torch >= "
        f"{TORCH_TARGET_RELEASE} (stable ABI), CPython >= {PYTHON_TARGET_RELEASE} (abi3)\n"
        f"  CUDA kernels   {'yes' if build_cuda else 'no'} ({reason})\n"
        f"  CUDA toolkit   {cuda_home or '-'}\n"
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
        py_limited_api=True,
    )
    build_record = {
        "torch": torch.__version__,
        "torch_min": TORCH_TARGET_RELEASE,
        "torch_cuda": torch.version.cuda,
        "cuda_kernels": build_cuda,
        "why": reason,
        "cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST", "") if build_cuda else "",
        "cuda_toolkit": cuda_home,
    }

    class BuildWithRecord(BuildExtension.with_options(use_ninja=True)):
        """Writes _C.build.json beside the built library (in the wheel, or in place for editable installs): what
        it was built against, read at import before the library is loaded, and by `mmgdino info`."""

        def _record_path(self, library_path):
            return os.path.join(os.path.dirname(library_path), "_C.build.json")

        def build_extension(self, extension):
            super().build_extension(extension)
            with open(self._record_path(self.get_ext_fullpath(extension.name)), "w") as f:
                json.dump(build_record, f, indent=1)

        def copy_extensions_to_source(self):
            # Editable installs build elsewhere and copy only the library into the source tree; the record follows.
            super().copy_extensions_to_source()
            build_py = self.get_finalized_command("build_py")
            for extension in self.extensions:
                placed, built = self._get_inplace_equivalent(build_py, extension)
                self.copy_file(self._record_path(built), self._record_path(placed), level=self.verbose)

    return [ext], {"build_ext": BuildWithRecord}


ext_modules, cmdclass = _extensions()

setup(
    # Every package under mmgdino/, and the Triton kernels' folder installed as mmgdino.kernels (never as a
    # top-level `kernels`, which transformers probes for).
    packages=[*find_packages(include=["mmgdino", "mmgdino.*"]), "mmgdino.kernels"],
    # The Triton sources sit in top-level kernels/ but install only as mmgdino.kernels: a top-level package
    # named `kernels` would shadow Hugging Face's hub-kernel library, which transformers probes for.
    package_dir={"mmgdino": "mmgdino", "mmgdino.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    # The wheel's tag: cp310-abi3 (the module init uses the limited API; torch's BuildExtension defines
    # Py_LIMITED_API for 3.10 with py_limited_api=True).
    options={"bdist_wheel": {"py_limited_api": "cp{}{}".format(*cuda_build.PYTHON_TARGET)}} if ext_modules else {},
)
