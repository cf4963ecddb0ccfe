// Stand-in for csrc/include/mmgdino/cuda_context.h when the CUDA glue is built against the emulator: one device,
// nothing to switch, and the emulator's one stream.
#pragma once
#include <stdint.h>

#include "simt.h"

namespace mmgdino {
struct CudaDeviceGuard {
  explicit CudaDeviceGuard(int32_t) {}
};
inline cudaStream_t current_cuda_stream(int32_t) { return nullptr; }
}  // namespace mmgdino
