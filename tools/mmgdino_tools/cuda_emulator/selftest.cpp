// Kernels with known answers and known mistakes, to show that the emulator computes what the hardware computes
// and rejects what the hardware leaves undefined. Usage: selftest CASE; prints a result or a launch error.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

#include "simt.h"

namespace {

// Group sums over `width` lanes, written by lane 0 of each group.
__global__ void group_sums(const float* in, float* out, int width) {
  const int t = threadIdx.x;
  float x = in[blockIdx.x * blockDim.x + t];
  for (int offset = width / 2; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset, width);
  if (t % width == 0) out[(blockIdx.x * blockDim.x + t) / width] = x;
}

// Reverses each block's slice through shared memory.
__global__ void reverse_in_block(const int* in, int* out) {
  __shared__ int tile[128];
  const int base = blockIdx.x * blockDim.x;
  tile[threadIdx.x] = in[base + threadIdx.x];
  __syncthreads();
  out[base + threadIdx.x] = tile[blockDim.x - 1 - threadIdx.x];
}

__global__ void shuffle_after_exit(float* out) {
  if (threadIdx.x == 3) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}

__global__ void divergent_sync(float* out) {
  if (threadIdx.x < 16) __syncthreads();
  out[threadIdx.x] = 1.0f;
}

__global__ void read_one_past(const float* in, float* out) { out[threadIdx.x] = in[threadIdx.x + 1]; }

int check(cudaError_t launched) {
  const cudaError_t err = cudaGetLastError();
  if (err != launched) {
    printf("launch returned %d, cudaGetLastError %d\n", static_cast<int>(launched), static_cast<int>(err));
    return 4;
  }
  if (err != cudaSuccess) {
    printf("error: %s\n", cudaGetErrorString(err));
    return 3;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  const char* which = argv[1];
  if (!strcmp(which, "group_sums")) {
    const int blocks = 3, threads = 64;
    std::vector<float> in(blocks * threads), out(blocks * threads, -1.0f);
    for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<float>(i % 7);
    for (int width : {32, 8, 2}) {
      if (int s =
              check(simt::launch(group_sums, dim3(blocks), dim3(threads), 0, nullptr, in.data(), out.data(), width)))
        return s;
      for (int g = 0; g < blocks * threads / width; ++g) printf("%d %g\n", width, out[g]);
    }
    return 0;
  }
  if (!strcmp(which, "reverse_in_block")) {
    std::vector<int> in(256), out(256, -1);
    for (int i = 0; i < 256; ++i) in[i] = i;
    if (int s = check(simt::launch(reverse_in_block, dim3(2), dim3(128), 0, nullptr, in.data(), out.data()))) return s;
    for (int v : out) printf("%d\n", v);
    return 0;
  }
  std::vector<float> out(64);
  if (!strcmp(which, "shuffle_after_exit"))
    return check(simt::launch(shuffle_after_exit, dim3(1), dim3(32), 0, nullptr, out.data()));
  if (!strcmp(which, "divergent_sync"))
    return check(simt::launch(divergent_sync, dim3(1), dim3(32), 0, nullptr, out.data()));
  if (!strcmp(which, "read_one_past")) {
    float* in = static_cast<float*>(malloc(32 * sizeof(float)));
    for (int i = 0; i < 32; ++i) in[i] = 0.0f;
    const int s =
        check(simt::launch(read_one_past, dim3(1), dim3(32), 0, nullptr, static_cast<const float*>(in), out.data()));
    free(in);
    return s;
  }
  return 2;
}
