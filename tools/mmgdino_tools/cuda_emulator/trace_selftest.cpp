// Kernels whose memory traffic is known by hand, to show that the tracer (trace.cpp) counts what the hardware
// would. Usage: trace_selftest CASE, with SIMT_TRACE_OUT naming the counters' JSON file. One warp per case.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

#include "simt.h"

namespace {

// Lane i copies float i: each warp instruction touches 128 contiguous bytes, 4 sectors, 1 line.
__global__ void coalesced_copy(const float* in, float* out) { out[threadIdx.x] = in[threadIdx.x]; }

// Lane i reads float 32 * i: 32 sectors (and 32 lines) per instruction.
__global__ void stride_32_gather(const float* in, float* out) { out[threadIdx.x] = in[32 * threadIdx.x]; }

// Lane i reads 16 bytes at 16 * i: 512 bytes, 16 sectors, 4 lines per instruction.
__global__ void vector_copy(const float4* in, float4* out) { out[threadIdx.x] = in[threadIdx.x]; }

// Every lane adds to the same address: 32 atomics, one address, a 32-way conflict.
__global__ void same_address_atomic(float* out) { atomicAdd(out, 1.0f); }

// Lane i adds to its own float: 32 addresses, no conflict.
__global__ void distinct_address_atomic(float* out) { atomicAdd(out + threadIdx.x, 1.0f); }

// Shared memory: lane i reads word i (no bank conflict: 1 wavefront), then word 32 * i (all in bank 0: 32).
__global__ void shared_banks(float* out) {
  __shared__ float tile[32 * 32];
  for (int i = threadIdx.x; i < 32 * 32; i += 32) tile[i] = static_cast<float>(i);
  __syncthreads();
  out[threadIdx.x] = tile[threadIdx.x] + tile[32 * threadIdx.x];
}

template <typename T>
T* buffer(size_t count, const char* name) {
  void* base = nullptr;
  if (posix_memalign(&base, 256, count * sizeof(T)) != 0) exit(2);  // cudaMalloc's alignment
  T* p = static_cast<T*>(memset(base, 0, count * sizeof(T)));
  simt::trace_buffer(p, count * sizeof(T), name);
  return p;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  const char* which = argv[1];
  const dim3 one(1), warp(32);
  cudaError_t err = cudaErrorInvalidValue;
  if (!strcmp(which, "coalesced_copy")) {
    err = simt::launch(coalesced_copy, one, warp, 0, nullptr, buffer<float>(32, "in"), buffer<float>(32, "out"));
  } else if (!strcmp(which, "stride_32_gather")) {
    err = simt::launch(stride_32_gather, one, warp, 0, nullptr, buffer<float>(32 * 32, "in"), buffer<float>(32, "out"));
  } else if (!strcmp(which, "vector_copy")) {
    err = simt::launch(vector_copy, one, warp, 0, nullptr, buffer<float4>(32, "in"), buffer<float4>(32, "out"));
  } else if (!strcmp(which, "same_address_atomic")) {
    err = simt::launch(same_address_atomic, one, warp, 0, nullptr, buffer<float>(1, "out"));
  } else if (!strcmp(which, "distinct_address_atomic")) {
    err = simt::launch(distinct_address_atomic, one, warp, 0, nullptr, buffer<float>(32, "out"));
  } else if (!strcmp(which, "shared_banks")) {
    err = simt::launch(shared_banks, one, warp, 0, nullptr, buffer<float>(32, "out"));
  }
  if (err != cudaSuccess) {
    printf("error: %s\n", cudaGetErrorString(err));
    return 3;
  }
  return 0;
}
