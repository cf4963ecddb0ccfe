// Stand-in for c10's CUDAStream when the CUDA glue is built against the emulator: the emulator has one stream.
#pragma once
#include "simt.h"

namespace c10::cuda {
struct CUDAStream {
  cudaStream_t stream() const { return nullptr; }
};
inline CUDAStream getCurrentCUDAStream(signed char = -1) { return {}; }
}  // namespace c10::cuda
