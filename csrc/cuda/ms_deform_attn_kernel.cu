// Multi-scale deformable attention on CUDA, forward and backward.
//
// Mapping: a group of kGroup lanes (a sub-warp, kGroup in {1, 2, 4, 8, 16, 32}) per (batch, query, head); each
// lane owns kVec contiguous channels (16 bytes: 4 float, 8 half/bfloat16, 2 double) and loads them with one
// vector load per corner. The bilinear taps of a point are resolved once per lane, by the shared math in
// sampling.h, for all of its channels (the original op recomputes them for every channel). One launch, a
// grid-stride loop, no im2col_step, no divisibility conditions, int64 offsets, float32 accumulation.
//
// Backward: the same mapping; per corner the lane's partial dot <value, grad_output> is reduced across the
// group with shuffles (no atomics for grad_location / grad_attention: one group owns each point), and
// grad_value is scattered with float32 atomics into a float32 buffer (never a half/bfloat16 CAS loop), 16 bytes
// per atomic on sm_90.
//
// Bad level tables cannot read outside value: every corner row is bounds-checked against num_values.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "mmgdino/cuda_launch.h"
#include "numeric.cuh"
#include "mmgdino/sampling.h"

namespace mmgdino {
namespace cuda {
namespace {

constexpr int kThreads = 256;

// kVec elements of T moved as one aligned vector.
template <typename T, int kVec>
struct alignas(sizeof(T) * kVec) Packet {
  T v[kVec];
};

template <typename T, int kVec>
__device__ __forceinline__ Packet<T, kVec> load_packet(const T* p) {
  return *reinterpret_cast<const Packet<T, kVec>*>(p);
}

// Sum over the kGroup lanes of one group (kGroup a power of two, groups aligned within the warp).
template <int kGroup, typename A>
__device__ __forceinline__ A group_sum(A x) {
#pragma unroll
  for (int offset = kGroup / 2; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset, kGroup);
  return x;
}

// Adds kCount consecutive accumulators. Hopper (sm_90) has 16-byte vector atomics: one float4 atomic instead of
// four scalar ones cuts the atomic transactions of grad_value by four. p is 16-byte aligned whenever the caller's
// chunk is a whole packet (the launcher only picks kVec > 1 for aligned buffers and head_dim % kVec == 0).
template <typename A, int kCount>
__device__ __forceinline__ void atomic_accumulate(A* p, const A (&x)[kCount]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if constexpr (std::is_same_v<A, float> && kCount % 4 == 0) {
#pragma unroll
    for (int i = 0; i < kCount; i += 4) {
      atomicAdd(reinterpret_cast<float4*>(p + i), make_float4(x[i], x[i + 1], x[i + 2], x[i + 3]));
    }
  } else
#endif
  {
#pragma unroll
    for (int i = 0; i < kCount; ++i) atomicAdd(p + i, x[i]);
  }
}

// 16-bit inputs accumulate 8 float32 channels per lane: 32 bytes, one sector, added by two 16-byte atomics. Issued
// as they are, each atomic instruction touches half of every lane's sector: 32 sectors per request. Lanes 2j and
// 2j+1 (neighbouring chunks, both adding or both not) swap halves instead, so that each instruction fills whole
// sectors: the first adds lane 2j's sector, the second lane 2j+1's, 16 sectors per request. Addresses and data are
// selected, not branched on, so both lanes of a pair issue the same two instructions. Every lane of the warp must
// call it (a full-mask shuffle); `adds` says whether this lane's pair has anything to add.
__device__ __forceinline__ void atomic_accumulate_paired(float* p, const float (&x)[8], bool adds, int lane) {
  const bool even = (lane & 1) == 0;
  float got[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) got[i] = __shfl_xor_sync(0xffffffffu, even ? x[4 + i] : x[i], 1);
  if (!adds) return;
  float first[4], second[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    first[i] = even ? x[i] : got[i];
    second[i] = even ? got[i] : x[4 + i];
  }
  atomic_accumulate(even ? p : p - 4, first);       // lane 2j's sector: its low half, then its high half from 2j+1
  atomic_accumulate(even ? p + 8 : p + 4, second);  // lane 2j+1's sector: its low half from 2j, then its high half
}

// Where one (query, head) row fills whole 128-byte lines (16-byte packets, 8 or more lanes: float32 heads of 32
// channels and up), the kernels walk (head, batch * query) head-major: a block then holds consecutive queries of one
// head, whose samples fall on neighbouring pixels, so its gathers reuse each other's sectors in L1 (modeled, float32
// encoder: L1 hits 45% -> 68% forward; benchmarks/results/gpu-model-msda.md). Shorter rows keep item order, where
// a warp's groups read one pixel's adjacent heads: head-major would spread a warp's half-lines over twice the lines
// (modeled bfloat16: L1 wavefronts up, 7% slower on H100). The walk advances without dividing in the loop: a 64-bit
// division there made the backward spill on sm_90 and the scalar instantiations spill in both.
template <int kVec, int kGroup>
constexpr bool kHeadMajor = kVec > 1 && kGroup >= 8;

// The grid-stride walk over steps = (query, head) items, in the order above. item = (b * num_queries + q) *
// num_heads + h is the layout of the point tables and of the output.
template <bool kHeadMajorWalk>
struct Walk {
  int64_t step, item, h, b;
  __device__ Walk(int64_t first, const MsdaForwardArgs& a) : step(first), h(0), row_(first) {
    if constexpr (kHeadMajorWalk) {
      rows_ = a.batch * a.num_queries;
      h = rows_ > 0 ? first / rows_ : 0;
      row_ = first - h * rows_;
    }
    locate(a);
  }
  __device__ void advance(int64_t by, const MsdaForwardArgs& a) {
    step += by;
    row_ += by;
    if constexpr (kHeadMajorWalk) {
      while (row_ >= rows_ && rows_ > 0) {  // by is at most a few times rows: a few trips at most
        row_ -= rows_;
        ++h;
      }
    }
    locate(a);
  }

 private:
  __device__ void locate(const MsdaForwardArgs& a) {
    if constexpr (kHeadMajorWalk) {
      item = row_ * a.num_heads + h;
      b = row_ / a.num_queries;
    } else {
      item = step;
      h = item % a.num_heads;
      b = item / (a.num_queries * a.num_heads);
    }
  }
  int64_t row_, rows_ = 0;
};

// A lane's place in the walk (its lane in the group, its group's first step, the grid's stride in groups) and the
// sizes both kernels index with.
template <int kVec, int kGroup>
struct LaneLayout {
  int lane;
  int64_t first_group, groups_per_grid, items, row_stride, points_per_head, chunks;
  __device__ explicit LaneLayout(const MsdaForwardArgs& a)
      : lane(threadIdx.x % kGroup),
        first_group(static_cast<int64_t>(blockIdx.x) * (kThreads / kGroup) + threadIdx.x / kGroup),
        groups_per_grid(static_cast<int64_t>(gridDim.x) * (kThreads / kGroup)),
        items(a.batch * a.num_queries * a.num_heads),
        row_stride(a.num_heads * a.head_dim),
        points_per_head(a.num_levels * a.num_points),
        chunks(a.head_dim / kVec) {}
};

template <typename T, int kVec, int kGroup>
__global__ void __launch_bounds__(kThreads) msda_forward_kernel(MsdaForwardArgs a) {
  using A = typename Acc<T>::type;
  const T* __restrict__ value = static_cast<const T*>(a.value);
  const T* __restrict__ loc = static_cast<const T*>(a.sampling_locations);
  const T* __restrict__ attn = static_cast<const T*>(a.attention_weights);
  T* __restrict__ out = static_cast<T*>(a.output);
  const LaneLayout<kVec, kGroup> layout(a);

  for (Walk<kHeadMajor<kVec, kGroup>> w(layout.first_group, a); w.step < layout.items;
       w.advance(layout.groups_per_grid, a)) {
    const int64_t item = w.item, h = w.h, b = w.b;
    const T* value_bh = value + (b * a.num_values * a.num_heads + h) * a.head_dim;
    const T* item_loc = loc + 2 * item * layout.points_per_head;
    const T* item_attn = attn + item * layout.points_per_head;
    for (int64_t chunk = layout.lane; chunk < layout.chunks; chunk += kGroup) {
      const int64_t channel = chunk * kVec;
      A acc[kVec];
#pragma unroll
      for (int i = 0; i < kVec; ++i) acc[i] = A(0);
      for (int64_t l = 0; l < a.num_levels; ++l) {
        const auto [height, width, start] = level_extent(a.spatial_shapes, a.level_start_index, l);
        for (int64_t p = 0; p < a.num_points; ++p) {
          const int64_t point = l * a.num_points + p;
          BilinearTaps<A> taps;
          if (!resolve_taps<A>(to_acc(item_loc[2 * point]), to_acc(item_loc[2 * point + 1]), height, width, start,
                               a.num_values, taps)) {
            continue;
          }
          const A w_attn = to_acc(item_attn[point]);
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            if (!taps.valid[k]) continue;
            const Packet<T, kVec> v = load_packet<T, kVec>(value_bh + taps.row[k] * layout.row_stride + channel);
            const A w = w_attn * taps.weight[k];
#pragma unroll
            for (int i = 0; i < kVec; ++i) acc[i] += w * to_acc(v.v[i]);
          }
        }
      }
      Packet<T, kVec> o;
#pragma unroll
      for (int i = 0; i < kVec; ++i) o.v[i] = from_acc<T>(acc[i]);
      *reinterpret_cast<Packet<T, kVec>*>(out + item * a.head_dim + channel) = o;
    }
  }
}

// Each lane holds at most kMaxChunksPerLane chunks of grad_output in registers; wider heads use the chunk loop of
// a bigger group (kGroup = 32 covers head_dim up to 32 * kVec * kMaxChunksPerLane).
constexpr int kMaxChunksPerLane = 4;

template <typename T, int kVec, int kGroup>
__global__ void __launch_bounds__(kThreads) msda_backward_kernel(MsdaBackwardArgs args) {
  using A = typename Acc<T>::type;
  const MsdaForwardArgs& a = args.fwd;
  const T* __restrict__ value = static_cast<const T*>(a.value);
  const T* __restrict__ loc = static_cast<const T*>(a.sampling_locations);
  const T* __restrict__ attn = static_cast<const T*>(a.attention_weights);
  const T* __restrict__ grad_out = static_cast<const T*>(args.grad_output);
  A* __restrict__ grad_value = static_cast<A*>(args.grad_value_acc);
  T* __restrict__ grad_loc = static_cast<T*>(args.grad_sampling_locations);
  T* __restrict__ grad_attn = static_cast<T*>(args.grad_attention_weights);
  const LaneLayout<kVec, kGroup> layout(a);
  // Pairs (atomic_accumulate_paired) need both lanes in one group and on the same chunk trips: an even chunk count.
  constexpr bool kPairable = std::is_same_v<A, float> && kVec == 8 && kGroup >= 2;
  [[maybe_unused]] const bool paired = kPairable && layout.chunks % 2 == 0;
  // 16-bit rows of 64 channels and more keep item order here: on top of the pairs' registers, head-major spills.
  constexpr bool kWalkHeadMajor = kHeadMajor<kVec, kGroup> && !kPairable;

  // Every lane of a warp runs the same number of iterations (the loop bound is warp-uniform), so the
  // full-mask shuffles below are safe; lanes without an item work on zeros and write nothing.
  const int64_t warp_items = (layout.items + (kThreads / kGroup) - 1) / (kThreads / kGroup) * (kThreads / kGroup);
  for (Walk<kWalkHeadMajor> w(layout.first_group, a); w.step < warp_items; w.advance(layout.groups_per_grid, a)) {
    const bool active = w.step < layout.items;
    const int64_t item = active ? w.item : 0, h = active ? w.h : 0, b = active ? w.b : 0;
    const int64_t slice = (b * a.num_values * a.num_heads + h) * a.head_dim;
    const T* value_bh = value + slice;
    A* grad_value_bh = grad_value + slice;
    const T* item_loc = loc + 2 * item * layout.points_per_head;
    const T* item_attn = attn + item * layout.points_per_head;

    A g[kMaxChunksPerLane][kVec];
#pragma unroll
    for (int c = 0; c < kMaxChunksPerLane; ++c) {
      const int64_t chunk = layout.lane + static_cast<int64_t>(c) * kGroup;
      const bool have = active && chunk < layout.chunks;
      Packet<T, kVec> v;
      if (have) v = load_packet<T, kVec>(grad_out + item * a.head_dim + chunk * kVec);
#pragma unroll
      for (int i = 0; i < kVec; ++i) g[c][i] = have ? to_acc(v.v[i]) : A(0);
    }

    for (int64_t l = 0; l < a.num_levels; ++l) {
      const auto [height, width, start] = level_extent(a.spatial_shapes, a.level_start_index, l);
      for (int64_t p = 0; p < a.num_points; ++p) {
        const int64_t point = l * a.num_points + p;
        BilinearTaps<A> taps;
        const bool touches = active && resolve_taps<A>(to_acc(item_loc[2 * point]), to_acc(item_loc[2 * point + 1]),
                                                       height, width, start, a.num_values, taps);
        const A w_attn = active ? to_acc(item_attn[point]) : A(0);
        A corner_dot[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          A partial = A(0);
          const bool corner = touches && taps.valid[k];
          const A w = corner ? w_attn * taps.weight[k] : A(0);
          // This lane's chunk c of the corner: its dot with grad_output goes to partial; returns where its
          // grad_value contribution goes.
          const auto take = [&](int c, A(&contribution)[kVec]) {
            const int64_t offset =
                taps.row[k] * layout.row_stride + (layout.lane + static_cast<int64_t>(c) * kGroup) * kVec;
            const Packet<T, kVec> v = load_packet<T, kVec>(value_bh + offset);
#pragma unroll
            for (int i = 0; i < kVec; ++i) {
              partial += to_acc(v.v[i]) * g[c][i];
              contribution[i] = w * g[c][i];
            }
            return offset;
          };
          if constexpr (kPairable) {
            if (paired) {  // every lane of the warp runs the same trips: the pairs shuffle
#pragma unroll
              for (int c = 0; c < kMaxChunksPerLane; ++c) {
                if (static_cast<int64_t>(c) * kGroup >= layout.chunks) break;
                const bool adds = corner && layout.lane + static_cast<int64_t>(c) * kGroup < layout.chunks;
                A contribution[kVec] = {};
                const int64_t offset = adds ? take(c, contribution) : 0;
                atomic_accumulate_paired(grad_value_bh + offset, contribution, adds, layout.lane);
              }
              corner_dot[k] = group_sum<kGroup>(partial);
              continue;
            }
          }
          if (corner) {
#pragma unroll
            for (int c = 0; c < kMaxChunksPerLane; ++c) {
              if (layout.lane + static_cast<int64_t>(c) * kGroup >= layout.chunks) break;
              A contribution[kVec];
              const int64_t offset = take(c, contribution);
              atomic_accumulate(grad_value_bh + offset, contribution);
            }
          }
          corner_dot[k] = group_sum<kGroup>(partial);
        }
        if (active && layout.lane == 0) {
          T* gl = grad_loc + 2 * (item * layout.points_per_head + point);
          if (touches) {
            const PointGrad<A> pg = point_gradient<A>(taps, corner_dot, w_attn, height, width);
            gl[0] = from_acc<T>(pg.loc_x);
            gl[1] = from_acc<T>(pg.loc_y);
            grad_attn[item * layout.points_per_head + point] = from_acc<T>(pg.attn);
          } else {
            gl[0] = from_acc<T>(A(0));
            gl[1] = from_acc<T>(A(0));
            grad_attn[item * layout.points_per_head + point] = from_acc<T>(A(0));
          }
        }
      }
    }
  }
}

int ceil_pow2(int64_t x) {
  int p = 1;
  while (p < x && p < 32) p *= 2;
  return p;
}

// A grid-stride loop covers the items past the cap; 65535 * 8 blocks keep every SM busy on any current GPU. The
// CPU emulator in tests/ lowers the cap so that small test shapes go around the loop too.
#ifndef MMGDINO_CUDA_MAX_BLOCKS
#define MMGDINO_CUDA_MAX_BLOCKS (65535 * 8)
#endif

int grid_size(int64_t items, int group) {
  const int64_t per_block = kThreads / group;
  const int64_t blocks = (items + per_block - 1) / per_block;
  const int64_t cap = MMGDINO_CUDA_MAX_BLOCKS;
  return static_cast<int>(blocks < cap ? (blocks > 0 ? blocks : 1) : cap);
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

template <typename T>
struct Launcher {
  static constexpr int kWideVec = 16 / sizeof(T);

  template <int kVec, int kGroup>
  static cudaError_t forward(const MsdaForwardArgs& a, cudaStream_t stream) {
    const int64_t items = a.batch * a.num_queries * a.num_heads;
    msda_forward_kernel<T, kVec, kGroup><<<grid_size(items, kGroup), kThreads, 0, stream>>>(a);
    return cudaGetLastError();
  }

  template <int kVec, int kGroup>
  static cudaError_t backward(const MsdaBackwardArgs& a, cudaStream_t stream) {
    const int64_t items = a.fwd.batch * a.fwd.num_queries * a.fwd.num_heads;
    msda_backward_kernel<T, kVec, kGroup><<<grid_size(items, kGroup), kThreads, 0, stream>>>(a);
    return cudaGetLastError();
  }

  // Picks the vector width (16 bytes when head_dim and the pointers allow it, else one element) and the group
  // size (lanes per (query, head): the channel chunks rounded up to a power of two, at most a warp).
  template <bool kBackward, typename Args>
  static cudaError_t dispatch(const Args& args, const MsdaForwardArgs& a, const void* const* pointers, int count,
                              cudaStream_t stream) {
    bool wide = a.head_dim % kWideVec == 0;
    for (int i = 0; i < count; ++i) wide = wide && aligned16(pointers[i]);
    if (wide) return dispatch_group<kWideVec, kBackward>(args, a, stream);
    return dispatch_group<1, kBackward>(args, a, stream);
  }

  template <int kVec, bool kBackward, typename Args>
  static cudaError_t dispatch_group(const Args& args, const MsdaForwardArgs& a, cudaStream_t stream) {
    const int64_t chunks = a.head_dim / kVec;
    int group = ceil_pow2(chunks);
    if (kBackward && chunks > static_cast<int64_t>(group) * kMaxChunksPerLane) return cudaErrorInvalidValue;
    switch (group) {
#define MMGDINO_CASE(G)                       \
  case G:                                     \
    if constexpr (kBackward)                  \
      return backward<kVec, G>(args, stream); \
    else                                      \
      return forward<kVec, G>(args, stream);
      MMGDINO_CASE(1)
      MMGDINO_CASE(2)
      MMGDINO_CASE(4)
      MMGDINO_CASE(8)
      MMGDINO_CASE(16)
      MMGDINO_CASE(32)
#undef MMGDINO_CASE
      default: return cudaErrorInvalidValue;
    }
  }
};

template <typename Fn>
cudaError_t by_dtype(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kFloat32: return fn(float{});
    case DType::kFloat64: return fn(double{});
    case DType::kFloat16: return fn(__half{});
    case DType::kBFloat16: return fn(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t ms_deform_attn_forward(const MsdaForwardArgs& a, cudaStream_t stream) {
  if (a.batch * a.num_queries * a.num_heads == 0 || a.head_dim == 0) return cudaSuccess;
  const void* pointers[] = {a.value, a.output};
  return by_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    return Launcher<T>::template dispatch<false>(a, a, pointers, 2, stream);
  });
}

cudaError_t ms_deform_attn_backward(const MsdaBackwardArgs& args, cudaStream_t stream) {
  const MsdaForwardArgs& a = args.fwd;
  if (a.batch * a.num_queries * a.num_heads == 0 || a.head_dim == 0) return cudaSuccess;
  const void* pointers[] = {a.value, args.grad_output, args.grad_value_acc};
  return by_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    return Launcher<T>::template dispatch<true>(args, a, pointers, 3, stream);
  });
}

}  // namespace cuda
}  // namespace mmgdino
