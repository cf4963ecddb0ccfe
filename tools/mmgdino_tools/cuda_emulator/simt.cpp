// The fiber scheduler behind simt.h.
#include "simt.h"

#include <ucontext.h>

#include <stdio.h>
#include <stdlib.h>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define SIMT_ASAN 1
#endif

uint3 threadIdx;
uint3 blockIdx;
dim3 blockDim;
dim3 gridDim;

namespace simt {

// Defined by trace.cpp in the trace build only: folds the finished block's accesses into the counters.
__attribute__((weak)) void trace_block_done();

namespace {

constexpr int kWarp = 32;
constexpr size_t kStackBytes = 256 * 1024;

struct Barrier {
  int arrived = 0;
  uint64_t generation = 0;
};

struct Fiber {
  ucontext_t context;
  std::vector<char> stack;
  bool done = false;
  void* fake_stack = nullptr;  // AddressSanitizer's bookkeeping across switches
};

struct Block {
  std::vector<Fiber> fibers;
  ucontext_t scheduler;
  int current = 0;
  int threads = 0;
  std::vector<Barrier> warp_barrier;
  std::vector<int> warp_exited;
  std::vector<uint64_t> slots;
  Barrier block_barrier;
  int exited = 0;
  bool progress = false;
  void (*body)(void*) = nullptr;
  void* context = nullptr;
  const void* main_stack_bottom = nullptr;  // the scheduler's stack, for AddressSanitizer
  size_t main_stack_size = 0;
};

Block* g_block = nullptr;
cudaError_t g_error = cudaSuccess;
std::string g_message;

int warp_size_of(const Block& b, int warp) {
  const int first = warp * kWarp;
  return b.threads - first < kWarp ? b.threads - first : kWarp;
}

void fail(const std::string& message) {
  if (g_error == cudaSuccess) {
    g_error = cudaErrorLaunchFailure;
    g_message = message;
  }
}

void set_thread_index(int t) {
  threadIdx.x = t % blockDim.x;
  threadIdx.y = (t / blockDim.x) % blockDim.y;
  threadIdx.z = t / (blockDim.x * blockDim.y);
}

// Fiber -> scheduler.
void yield_to_scheduler() {
  Block& b = *g_block;
  Fiber& self = b.fibers[b.current];
#ifdef SIMT_ASAN
  __sanitizer_start_switch_fiber(&self.fake_stack, b.main_stack_bottom, b.main_stack_size);
#endif
  swapcontext(&self.context, &b.scheduler);
#ifdef SIMT_ASAN
  __sanitizer_finish_switch_fiber(self.fake_stack, &b.main_stack_bottom, &b.main_stack_size);
#endif
}

void fiber_main() {
  Block& b = *g_block;
#ifdef SIMT_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &b.main_stack_bottom, &b.main_stack_size);
#endif
  b.body(b.context);
  Block& after = *g_block;
  Fiber& self = after.fibers[after.current];
  self.done = true;
  after.progress = true;
  ++after.exited;
  const int warp = after.current / kWarp;
  ++after.warp_exited[warp];
  if (after.warp_barrier[warp].arrived > 0) fail("a lane exited while the rest of its warp waits at a shuffle");
  if (after.block_barrier.arrived > 0) fail("a thread exited while the block waits at __syncthreads");
#ifdef SIMT_ASAN
  __sanitizer_start_switch_fiber(nullptr, after.main_stack_bottom, after.main_stack_size);  // this stack is done
#endif
  // uc_link returns to the scheduler.
}

// Waits until `expected` fibers have arrived; the last one releases the rest.
void wait_at(Barrier& barrier, int expected) {
  Block& b = *g_block;
  b.progress = true;
  const uint64_t generation = barrier.generation;
  if (++barrier.arrived == expected) {
    barrier.arrived = 0;
    ++barrier.generation;
    return;
  }
  while (barrier.generation == generation) yield_to_scheduler();
}

}  // namespace

int lane_id() {
  Block& b = *g_block;
  return b.current % kWarp;
}

bool current_warp_lane(uint64_t* warp, int* lane) {
  if (g_block == nullptr) return false;  // host code between launches
  const Block& b = *g_block;
  const uint64_t block =
      blockIdx.x + static_cast<uint64_t>(gridDim.x) * (blockIdx.y + static_cast<uint64_t>(gridDim.y) * blockIdx.z);
  const uint64_t warps_per_block = (b.threads + kWarp - 1) / kWarp;
  *warp = block * warps_per_block + b.current / kWarp;
  *lane = b.current % kWarp;
  return true;
}

uint64_t shuffle(unsigned mask, uint64_t bits, int src_lane) {
  Block& b = *g_block;
  const int warp = b.current / kWarp;
  const int size = warp_size_of(b, warp);
  const unsigned full = size == kWarp ? 0xffffffffu : ((1u << size) - 1u);
  if (mask != full) fail("shuffle with a partial mask (the kernels use full warps only)");
  if (b.warp_exited[warp] > 0) fail("full-mask shuffle after a lane of the warp exited");
  if (src_lane >= size) fail("shuffle reads a lane that does not exist");
  b.slots[b.current] = bits;
  wait_at(b.warp_barrier[warp], size);  // every lane has written its slot
  const uint64_t got = b.slots[warp * kWarp + src_lane];
  wait_at(b.warp_barrier[warp], size);  // every lane has read before the slots are reused
  return got;
}

void sync_block() {
  Block& b = *g_block;
  if (b.exited > 0) fail("__syncthreads after a thread of the block exited");
  wait_at(b.block_barrier, b.threads);
}

namespace {

// Runs the fibers of the current block round-robin until all are done; false on an error (kept in g_error).
bool run_block(Block& b) {
  const int warps = (b.threads + kWarp - 1) / kWarp;
  b.warp_barrier.assign(warps, Barrier{});
  b.warp_exited.assign(warps, 0);
  b.slots.assign(static_cast<size_t>(warps) * kWarp, 0);
  b.block_barrier = Barrier{};
  b.exited = 0;
  for (Fiber& f : b.fibers) {
    f.done = false;
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack.data();
    f.context.uc_stack.ss_size = f.stack.size();
    f.context.uc_link = &b.scheduler;
    makecontext(&f.context, fiber_main, 0);
  }
  // A full pass without progress is a deadlock.
  for (int live = b.threads; live > 0;) {
    b.progress = false;
    live = 0;
    for (int t = 0; t < b.threads; ++t) {
      Fiber& f = b.fibers[t];
      if (f.done) continue;
      b.current = t;
      set_thread_index(t);
#ifdef SIMT_ASAN
      void* fake = nullptr;
      __sanitizer_start_switch_fiber(&fake, f.stack.data(), f.stack.size());
#endif
      swapcontext(&b.scheduler, &f.context);
#ifdef SIMT_ASAN
      __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
      if (g_error != cudaSuccess) return false;
      if (!f.done) ++live;
    }
    if (live > 0 && !b.progress) {
      fail("deadlock: some threads wait at a barrier the others never reach");
      return false;
    }
  }
  return true;
}

}  // namespace

void run_grid(dim3 grid, dim3 block, void (*body)(void*), void* context) {
  if (g_error != cudaSuccess) return;
  const int threads = static_cast<int>(block.x * block.y * block.z);
  if (threads <= 0 || threads > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535) {
    g_error = cudaErrorInvalidValue;  // what a real launch answers for a bad configuration
    g_message = "invalid launch configuration";
    return;
  }
  gridDim = grid;
  blockDim = block;
  Block b;
  b.threads = threads;
  b.fibers.resize(threads);
  for (Fiber& f : b.fibers) f.stack.resize(kStackBytes);
  b.body = body;
  b.context = context;
  g_block = &b;
  const uint64_t blocks = static_cast<uint64_t>(grid.x) * grid.y * grid.z;
  for (uint64_t i = 0; i < blocks; ++i) {
    blockIdx = {static_cast<unsigned>(i % grid.x), static_cast<unsigned>(i / grid.x % grid.y),
                static_cast<unsigned>(i / (static_cast<uint64_t>(grid.x) * grid.y))};
    if (!run_block(b)) break;
    if (trace_block_done) trace_block_done();
  }
  g_block = nullptr;
}

}  // namespace simt

cudaError_t cudaGetLastError() {
  const cudaError_t e = simt::g_error;
  simt::g_error = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError() { return simt::g_error; }

const char* cudaGetErrorString(cudaError_t error) {
  if (error == cudaSuccess) return "no error";
  return simt::g_message.empty() ? "error" : simt::g_message.c_str();
}
