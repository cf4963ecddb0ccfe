// Memory-traffic counters for the emulated kernels: what Nsight Compute's memory metrics would count, exactly,
// from the unchanged kernels. Only in the trace build (emulator_build.py build_trace()): the kernel units
// are compiled with GCC's kernel-address instrumentation in outlined mode, so every load and store calls the
// __asan_{load,store}N_noabort hooks below with its address and size, and __builtin_return_address gives the
// instruction (call site). This file and the scheduler are not instrumented.
//
// A warp instruction is the k-th execution of one call site by the lanes of one warp (the lanes of a warp run the
// same instruction stream between barriers; where they diverge, the k-th executions of a site still pair up as
// the hardware would replay them). Per warp instruction: its 32-byte sectors (coalescing), its 128-byte lines,
// the atomics' distinct addresses (same-address conflicts), and for shared memory the bank wavefronts.
// Accesses count as global only inside the buffers the driver registers (trace_buffer), as shared inside static
// storage (where __shared__ lives in the emulator); anything else (stack, kernel arguments) is registers.
//
// The L2 estimate: every load's and atomic's distinct sectors, block after block in launch order, feed a histogram
// of reuse distances (reuse.h), from which gpu_model reads the hits of an LRU cache of each target's
// L2 size. A GPU runs many blocks at once, so reuse distances are somewhat longer there; with working sets under the
// L2 size the misses are the compulsory ones either way.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <algorithm>
#include <map>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "reuse.h"
#include "simt.h"

extern "C" char __data_start;  // the executable's static storage: [__data_start, _end)
extern "C" char _end;

namespace simt {
namespace {

enum Kind { kLoad, kStore, kAtomic, kKinds };
const char* const kKindNames[kKinds] = {"load", "store", "atomic"};
constexpr int kSharedBuffer = -1;
constexpr uint64_t kSector = 32, kLine = 128, kBanks = 32, kBankBytes = 4;

struct Buffer {
  uintptr_t begin, end;
  std::string name;
};

struct LaneAccess {
  int lane;
  uintptr_t address;
  uint32_t bytes;
};

struct Instruction {
  Kind kind;
  int buffer;  // index into g_buffers, or kSharedBuffer
  std::vector<LaneAccess> lanes;
};

// (warp, lane, site, kind): how many times this lane has reached this site; (warp, site, k, kind): the warp
// instruction of the k-th execution.
struct SiteKey {
  uint64_t warp;
  uintptr_t site;
  uint64_t lane_or_k;
  int kind;
  bool operator==(const SiteKey& o) const {
    return warp == o.warp && site == o.site && lane_or_k == o.lane_or_k && kind == o.kind;
  }
};
struct SiteKeyHash {
  size_t operator()(const SiteKey& k) const {
    uint64_t h = k.warp * 0x9E3779B97F4A7C15ull ^ k.site;
    h = (h ^ (h >> 29)) * 0xBF58476D1CE4E5B9ull ^ (k.lane_or_k << 2 | static_cast<uint64_t>(k.kind));
    return static_cast<size_t>(h ^ (h >> 32));
  }
};

struct Counters {
  uint64_t requests = 0, lane_accesses = 0, bytes = 0, sectors = 0, lines = 0;
  uint64_t distinct_addresses = 0;  // atomics: per instruction, summed
  uint64_t max_lanes_per_address = 0;
};

struct Tracer {
  std::vector<Buffer> buffers;
  // The current block's warp instructions, in the order they were first reached.
  std::vector<Instruction> instructions;
  std::unordered_map<SiteKey, size_t, SiteKeyHash> index;
  std::unordered_map<SiteKey, uint64_t, SiteKeyHash> executions;
  // Totals.
  std::map<std::pair<std::string, int>, Counters> by_buffer;  // (buffer name, kind)
  Counters totals[kKinds];
  uint64_t shared_requests = 0, shared_wavefronts = 0, blocks = 0;
  uint64_t lanes_sum = 0, global_requests = 0;
  std::unordered_set<uint64_t> distinct_sectors, distinct_lines, written_sectors;
  // Load sectors distinct within each block, summed over blocks: what reaches L2 if a block's repeated reads of
  // a sector hit in its SM's L1 (an SM's L1 holds far more than one block's gathers here).
  std::unordered_set<uint64_t> block_load_sectors;
  uint64_t l1_miss_sectors = 0;
  ReuseDistances l2;

  ~Tracer() { report(); }

  int buffer_of(uintptr_t a) const {
    for (size_t i = 0; i < buffers.size(); ++i) {
      if (a >= buffers[i].begin && a < buffers[i].end) return static_cast<int>(i);
    }
    return -2;
  }

  static bool is_shared(uintptr_t a) {
    const auto in = [a](const void* p, size_t n) {
      return a >= reinterpret_cast<uintptr_t>(p) && a < reinterpret_cast<uintptr_t>(p) + n;
    };
    if (in(&threadIdx, sizeof threadIdx) || in(&blockIdx, sizeof blockIdx) || in(&blockDim, sizeof blockDim) ||
        in(&gridDim, sizeof gridDim)) {
      return false;  // the emulator's built-in variables: registers on a GPU
    }
    return a >= reinterpret_cast<uintptr_t>(&__data_start) && a < reinterpret_cast<uintptr_t>(&_end);
  }

  void record(Kind kind, const void* p, size_t bytes, const void* site) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    int buffer = buffer_of(a);
    if (buffer < 0) {
      if (!is_shared(a)) return;
      buffer = kSharedBuffer;
    }
    uint64_t warp;
    int lane;
    if (!current_warp_lane(&warp, &lane)) return;  // not in a kernel: a launcher's or adapter's host code
    const uintptr_t where = reinterpret_cast<uintptr_t>(site);
    const uint64_t k = executions[SiteKey{warp, where, static_cast<uint64_t>(lane), kind}]++;
    auto [it, fresh] = index.try_emplace(SiteKey{warp, where, k, kind}, instructions.size());
    if (fresh) instructions.push_back(Instruction{kind, buffer, {}});
    instructions[it->second].lanes.push_back(LaneAccess{lane, a, static_cast<uint32_t>(bytes)});
  }

  void fold_block() {
    ++blocks;
    for (const Instruction& in : instructions) {
      if (in.buffer == kSharedBuffer) {
        fold_shared(in);
      } else {
        fold_global(in);
      }
    }
    instructions.clear();
    index.clear();
    executions.clear();
    l1_miss_sectors += block_load_sectors.size();
    block_load_sectors.clear();
  }

  void fold_shared(const Instruction& in) {
    // Bank wavefronts: distinct 4-byte words per bank, the most any bank must serve (broadcasts are free).
    std::map<uint64_t, std::unordered_set<uint64_t>> words_by_bank;
    for (const LaneAccess& l : in.lanes) {
      for (uint64_t w = l.address / kBankBytes; w <= (l.address + l.bytes - 1) / kBankBytes; ++w) {
        words_by_bank[w % kBanks].insert(w);
      }
    }
    size_t most = 1;
    for (const auto& [bank, words] : words_by_bank) most = std::max(most, words.size());
    ++shared_requests;
    shared_wavefronts += most;
  }

  void fold_global(const Instruction& in) {
    std::vector<uint64_t> sectors, lines, addresses;
    uint64_t bytes = 0;
    for (const LaneAccess& l : in.lanes) {
      for (uint64_t s = l.address / kSector; s <= (l.address + l.bytes - 1) / kSector; ++s) sectors.push_back(s);
      for (uint64_t s = l.address / kLine; s <= (l.address + l.bytes - 1) / kLine; ++s) lines.push_back(s);
      addresses.push_back(l.address);
      bytes += l.bytes;
    }
    for (auto* v : {&sectors, &lines, &addresses}) {
      std::sort(v->begin(), v->end());
      v->erase(std::unique(v->begin(), v->end()), v->end());
    }
    uint64_t most_on_one_address = 0;
    if (in.kind == kAtomic) {
      std::unordered_map<uintptr_t, uint64_t> lanes_at;
      for (const LaneAccess& l : in.lanes) most_on_one_address = std::max(most_on_one_address, ++lanes_at[l.address]);
    }
    for (Counters* c : {&totals[in.kind], &by_buffer[{buffers[in.buffer].name, in.kind}]}) {
      c->requests += 1;
      c->lane_accesses += in.lanes.size();
      c->bytes += bytes;
      c->sectors += sectors.size();
      c->lines += lines.size();
      c->distinct_addresses += addresses.size();
      c->max_lanes_per_address = std::max(c->max_lanes_per_address, most_on_one_address);
    }
    ++global_requests;
    lanes_sum += in.lanes.size();
    for (uint64_t s : sectors) {
      distinct_sectors.insert(s);
      if (in.kind == kLoad) block_load_sectors.insert(s);
      if (in.kind != kLoad) written_sectors.insert(s);
      // Stores fill whole sectors in L2 without reading DRAM; their write-back is written_sectors.
      if (in.kind != kStore) l2.touch(s);
    }
    for (uint64_t s : lines) distinct_lines.insert(s);
  }

  static void write_counters(FILE* f, const Counters& c) {
    fprintf(f,
            "{\"requests\": %llu, \"lane_accesses\": %llu, \"bytes\": %llu, \"sectors\": %llu, \"lines\": %llu, "
            "\"distinct_addresses\": %llu, \"max_lanes_per_address\": %llu}",
            static_cast<unsigned long long>(c.requests), static_cast<unsigned long long>(c.lane_accesses),
            static_cast<unsigned long long>(c.bytes), static_cast<unsigned long long>(c.sectors),
            static_cast<unsigned long long>(c.lines), static_cast<unsigned long long>(c.distinct_addresses),
            static_cast<unsigned long long>(c.max_lanes_per_address));
  }

  void report() {
    const char* path = getenv("SIMT_TRACE_OUT");
    if (path == nullptr) return;
    FILE* f = fopen(path, "w");
    if (f == nullptr) return;
    fprintf(f, "{\"blocks\": %llu, \"global\": {", static_cast<unsigned long long>(blocks));
    for (int k = 0; k < kKinds; ++k) {
      fprintf(f, "%s\"%s\": ", k ? ", " : "", kKindNames[k]);
      write_counters(f, totals[k]);
    }
    fprintf(f, "}, \"by_buffer\": {");
    bool first = true;
    for (const auto& [key, c] : by_buffer) {
      fprintf(f, "%s\"%s %s\": ", first ? "" : ", ", key.first.c_str(), kKindNames[key.second]);
      write_counters(f, c);
      first = false;
    }
    fprintf(f, "}, \"distinct_sectors\": %zu, \"distinct_lines\": %zu, \"written_sectors\": %zu",
            distinct_sectors.size(), distinct_lines.size(), written_sectors.size());
    fprintf(f, ", \"l1_miss_load_sectors\": %llu", static_cast<unsigned long long>(l1_miss_sectors));
    fprintf(f, ", \"active_lanes_per_request\": %.4f",
            global_requests ? static_cast<double>(lanes_sum) / global_requests : 0.0);
    fprintf(f, ", \"shared\": {\"requests\": %llu, \"wavefronts\": %llu}",
            static_cast<unsigned long long>(shared_requests), static_cast<unsigned long long>(shared_wavefronts));
    fprintf(f, ", \"reuse\": ");
    l2.write_json(f);
    fprintf(f, "}\n");
    fclose(f);
  }
};

Tracer& tracer() {
  static Tracer t;
  return t;
}

}  // namespace

void trace_buffer(const void* p, size_t bytes, const char* name) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  tracer().buffers.push_back(Buffer{a, a + bytes, name});
}

void trace_atomic(const void* p, size_t bytes) { tracer().record(kAtomic, p, bytes, __builtin_return_address(0)); }

void trace_block_done() { tracer().fold_block(); }

}  // namespace simt

// GCC's outlined kernel-address hooks, called by the instrumented kernel units for every load and store.
#define SIMT_HOOKS(n)                                                       \
  extern "C" void __asan_load##n##_noabort(void* p) {                       \
    simt::tracer().record(simt::kLoad, p, n, __builtin_return_address(0));  \
  }                                                                         \
  extern "C" void __asan_store##n##_noabort(void* p) {                      \
    simt::tracer().record(simt::kStore, p, n, __builtin_return_address(0)); \
  }
SIMT_HOOKS(1)
SIMT_HOOKS(2)
SIMT_HOOKS(4)
SIMT_HOOKS(8)
SIMT_HOOKS(16)
#undef SIMT_HOOKS
extern "C" void __asan_loadN_noabort(void* p, size_t n) {
  simt::tracer().record(simt::kLoad, p, n, __builtin_return_address(0));
}
extern "C" void __asan_storeN_noabort(void* p, size_t n) {
  simt::tracer().record(simt::kStore, p, n, __builtin_return_address(0));
}
extern "C" void __asan_handle_no_return() {}
// Called by instrumented code at startup in some GCC versions; nothing to set up.
extern "C" void __asan_before_dynamic_init(const char*) {}
extern "C" void __asan_after_dynamic_init() {}
