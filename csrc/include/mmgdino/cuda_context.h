// The device and the stream the CUDA glue launches on, through LibTorch's stable C shims (built with USE_CUDA).
// The emulated build of the tests replaces this header with tests/cuda_emulator/torch_stubs/mmgdino/cuda_context.h
// (one device, one stream).
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/headeronly/util/shim_utils.h>

namespace mmgdino {

// Makes a device current for the scope and restores the previous one after.
using CudaDeviceGuard = torch::stable::accelerator::DeviceGuard;

// The device's current stream, where torch orders its own work (and a CUDA graph being captured records).
inline cudaStream_t current_cuda_stream(int32_t device_index) {
  void* stream = nullptr;
  TORCH_ERROR_CODE_CHECK(aoti_torch_get_current_cuda_stream(device_index, &stream));
  return static_cast<cudaStream_t>(stream);
}

}  // namespace mmgdino
