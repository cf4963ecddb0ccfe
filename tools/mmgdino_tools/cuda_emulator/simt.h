// A small SIMT emulator that runs our CUDA kernels, unchanged, on the CPU, so that CI (which has no GPU) tests
// the kernels' own index math, vector loads, group mapping, shuffles and shared-memory tiling.
//
// Every CUDA thread of a block is a fiber (ucontext) on one OS thread; blocks run one after another. A fiber runs
// until it reaches a barrier (a shuffle or __syncthreads) and resumes once its whole warp (or block) has arrived,
// which is the lockstep the kernels rely on. Rules the hardware leaves undefined are errors here: a full-mask
// shuffle after a lane of the warp has exited, a barrier some threads never reach (divergence), a mask that is
// not the full warp. Built with AddressSanitizer, any read or write outside the buffers fails the run.
#pragma once

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// One copy per kernel instantiation, shared by the fibers of the block; blocks run one at a time.
#define __shared__ static

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

enum cudaError {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorNoKernelImageForDevice = 209,
  cudaErrorLaunchFailure = 719
};
typedef enum cudaError cudaError_t;
typedef struct CUstream_st* cudaStream_t;
enum cudaDeviceAttr { cudaDevAttrComputeCapabilityMajor = 75, cudaDevAttrComputeCapabilityMinor = 76 };

extern uint3 threadIdx;
extern uint3 blockIdx;
extern dim3 blockDim;
extern dim3 gridDim;

cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t error);
// One emulated device, compute capability 9.0.
inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int /*device*/) {
  *value = attr == cudaDevAttrComputeCapabilityMajor ? 9 : 0;
  return cudaSuccess;
}

namespace simt {

// The memory-traffic tracer (trace.cpp, only in the trace build: SIMT_TRACE): the calling thread's global warp
// and lane, false outside a launch (host code); atomics report themselves (their plain read-modify-write below is
// not traced as a load and a store).
bool current_warp_lane(uint64_t* warp, int* lane);
// Device memory the tracer counts as global (the driver's buffers); absent outside the trace build.
__attribute__((weak)) void trace_buffer(const void* p, size_t bytes, const char* name);
#ifdef SIMT_TRACE
void trace_atomic(const void* p, size_t bytes);
#define SIMT_ATOMIC inline __attribute__((no_sanitize_address))
#define SIMT_TRACE_ATOMIC(p, bytes) ::simt::trace_atomic(p, bytes)
#else
#define SIMT_ATOMIC inline
#define SIMT_TRACE_ATOMIC(p, bytes)
#endif

// Runs kernel_body for every thread of every block; errors are kept for cudaGetLastError.
void run_grid(dim3 grid, dim3 block, void (*body)(void*), void* context);
// The calling lane's value exchange with lane src of its warp (both 8-byte slots); a warp-wide barrier.
uint64_t shuffle(unsigned mask, uint64_t bits, int src_lane);
void sync_block();
int lane_id();

template <typename... Params, typename... Args>
cudaError_t launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t /*shared_bytes*/, cudaStream_t,
                   Args&&... args) {
  // Each thread gets its own copy of the arguments (the kernels take them by value), as on the GPU.
  auto bound = [&]() { kernel(args...); };
  using Bound = decltype(bound);
  run_grid(grid, block, [](void* p) { (*static_cast<Bound*>(p))(); }, &bound);
  // Like a real launch, the error stays for the caller's cudaGetLastError.
  return cudaPeekAtLastError();
}

}  // namespace simt

template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
  static_assert(sizeof(T) <= 8, "shuffle of more than 8 bytes");
  uint64_t bits = 0;
  memcpy(&bits, &var, sizeof(T));
  const int lane = simt::lane_id();
  int src = lane ^ lane_mask;
  // CUDA: a lane that would read from a later group of `width` lanes gets its own value.
  if (src >= (lane / width + 1) * width) src = lane;
  const uint64_t got = simt::shuffle(mask, bits, src);
  T out;
  memcpy(&out, &got, sizeof(T));
  return out;
}

inline void __syncthreads() { simt::sync_block(); }

struct alignas(16) float4 {
  float x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

// One OS thread runs every fiber, so a plain read-modify-write is atomic here.
SIMT_ATOMIC float atomicAdd(float* p, float x) {
  SIMT_TRACE_ATOMIC(p, sizeof(float));
  const float old = *p;
  *p = old + x;
  return old;
}
// sm_90's 16-byte vector atomic (atomic per element); the address must be 16-byte aligned, as on the GPU.
SIMT_ATOMIC float4 atomicAdd(float4* p, float4 x) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) __builtin_trap();
  SIMT_TRACE_ATOMIC(p, sizeof(float4));
  const float4 old = *p;
  *p = {old.x + x.x, old.y + x.y, old.z + x.z, old.w + x.w};
  return old;
}
SIMT_ATOMIC double atomicAdd(double* p, double x) {
  SIMT_TRACE_ATOMIC(p, sizeof(double));
  const double old = *p;
  *p = old + x;
  return old;
}
