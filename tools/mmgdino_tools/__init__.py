"""mmgdino's developer tools: what tests and benchmarks need from a checkout and the installed package does not
hold. Not installed with mmgdino; the folder above this package (tools/) goes on the import path (pytest's
`pythonpath` in pyproject.toml; PYTHONPATH=tools for a command), never the checkout's root, whose mmgdino/ and
kernels/ folders would shadow the installed package. Run a tool from the checkout's root as

    PYTHONPATH=tools python -P -m mmgdino_tools.<tool> ...

checkout          the checkout's paths, its build rules (mmgdino/_cuda_build.py), how one tool starts another
emulator_build    csrc/cuda compiled for the CPU SIMT emulator in cuda_emulator/: launchers, trace build, reuse
cuda_emulation    the emulated launchers run on torch tensors (outputs, or memory-traffic counters)
emulated_glue     the CUDA backend's ATen glue as a CPU torch extension around the emulated kernels
triton_trace      the Triton kernels' memory traffic, counted in Triton's interpreter (a command too)
triton_aot_compile  every Triton kernel configuration compiled for sm_80/sm_90 without a GPU (a command too)
kernel_resources  registers, spills, shared memory and occupancy of every kernel, from the compilers
cuda_resources    the kernels' resource budget, benchmarks/results/cuda-resources.json: written and checked (CI)
gpu_model         the GPU time model (modeled, not measured) on the traced counts: a package, one job a module
"""
