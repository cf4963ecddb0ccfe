// Turns the cudaError_t of a launch into an exception. A GPU the build has no kernels for (the classic "no kernel
// image is available") gets the fix spelled out: the build's arch list and the one it needs.
#pragma once

#include <cuda_runtime_api.h>

#include "mmgdino/build_info.h"
#include "mmgdino/stable.h"

// The tests build this glue against a CPU emulation of the kernels (tests/cuda_emulation.py) for the CPU key.
#ifndef MMGDINO_CUDA_DISPATCH_KEY
#define MMGDINO_CUDA_DISPATCH_KEY CUDA
#endif

namespace mmgdino {

inline void check_launch(cudaError_t err, const char* op) {
  if (err == cudaSuccess) return;
  if (err == cudaErrorNoKernelImageForDevice) {
    int device = 0, major = 0, minor = 0;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
    MMGDINO_CHECK(false, op, ": mmgdino's CUDA kernels were not built for this GPU (compute capability ", major, ".",
                  minor, "; built for ", cuda_arch_list(), "). Reinstall with TORCH_CUDA_ARCH_LIST=\"", major, ".",
                  minor, "\" pip install --no-build-isolation --force-reinstall mmgdino, or pass backend=\"triton\"");
  }
  MMGDINO_CHECK(false, op, ": CUDA launch failed: ", cudaGetErrorString(err));
}

}  // namespace mmgdino
