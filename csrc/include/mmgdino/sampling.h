// Bilinear sampling math for multi-scale deformable attention, shared by the CPU kernels (plain C++) and the
// CUDA kernels (__host__ __device__ under nvcc). Keeping one copy means the CPU tests exercise the exact
// arithmetic the GPU runs. No ATen or CUDA runtime headers here: the .cu files must build without them.
#pragma once

#include <stdint.h>
#include <math.h>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define MMGDINO_HD __host__ __device__ __forceinline__
#define MMGDINO_UNROLL _Pragma("unroll")
#else
#define MMGDINO_HD inline
#define MMGDINO_UNROLL
#endif

namespace mmgdino {

MMGDINO_HD float floor_of(float x) { return floorf(x); }
MMGDINO_HD double floor_of(double x) { return floor(x); }

// A feature level's extent: its height, width and first row on value's num_values axis, read from the level tables
// (spatial_shapes as (height, width) pairs, level_start_index).
struct LevelExtent {
  int64_t height, width, start;
};

MMGDINO_HD LevelExtent level_extent(const int64_t* spatial_shapes, const int64_t* level_start_index, int64_t level) {
  return {spatial_shapes[2 * level], spatial_shapes[2 * level + 1], level_start_index[level]};
}

// One sampling point resolved against one feature level: the four bilinear corners as absolute rows of
// value's num_values axis, with their weights. Corners outside the map (zero padding) or outside
// [0, num_values) (a level that claims more rows than value has) are marked invalid and never read.
template <typename coord_t>
struct BilinearTaps {
  int64_t row[4];
  coord_t weight[4];
  bool valid[4];
  coord_t frac_h;  // fractional part of the row coordinate
  coord_t frac_w;  // fractional part of the column coordinate
};

// Resolves a normalized (x, y) location, align_corners=False, into taps. Returns false when the point
// touches no pixel of the map; NaN and infinite locations land here because every comparison fails. A point
// exactly one pixel before the map (pixel coordinate -1) still counts: its value is 0 (all weight on the
// padding), but grid_sample's one-sided gradient toward row or column 0 is not, and transformers' initial
// sampling offsets put points there at edge pixels. One past the far edge (coordinate = size) touches nothing.
// Corner order: (h0, w0), (h0, w0 + 1), (h0 + 1, w0), (h0 + 1, w0 + 1).
template <typename coord_t>
MMGDINO_HD bool resolve_taps(coord_t loc_x, coord_t loc_y, int64_t height, int64_t width, int64_t level_start,
                             int64_t num_values, BilinearTaps<coord_t>& taps) {
  const coord_t h_im = loc_y * static_cast<coord_t>(height) - coord_t(0.5);
  const coord_t w_im = loc_x * static_cast<coord_t>(width) - coord_t(0.5);
  if (!(h_im >= coord_t(-1) && w_im >= coord_t(-1) && h_im < static_cast<coord_t>(height) &&
        w_im < static_cast<coord_t>(width))) {
    return false;
  }
  const coord_t h_floor = floor_of(h_im);
  const coord_t w_floor = floor_of(w_im);
  // In range [-1, size - 1] after the test above, so the conversion cannot overflow.
  const int64_t h0 = static_cast<int64_t>(h_floor);
  const int64_t w0 = static_cast<int64_t>(w_floor);
  const coord_t lh = h_im - h_floor;
  const coord_t lw = w_im - w_floor;
  const coord_t hh = coord_t(1) - lh;
  const coord_t hw = coord_t(1) - lw;
  taps.frac_h = lh;
  taps.frac_w = lw;
  const coord_t corner_weight[4] = {hh * hw, hh * lw, lh * hw, lh * lw};
  MMGDINO_UNROLL
  for (int k = 0; k < 4; ++k) {
    const int64_t h = h0 + (k >> 1);
    const int64_t w = w0 + (k & 1);
    const int64_t row = level_start + h * width + w;
    const bool inside = h >= 0 && h < height && w >= 0 && w < width && row >= 0 && row < num_values;
    taps.valid[k] = inside;
    taps.weight[k] = inside ? corner_weight[k] : coord_t(0);
    taps.row[k] = inside ? row : 0;
  }
  return true;
}

// Gradients of one sampling point given corner_dot[k] = <value[corner k], grad_output> (zero for invalid
// corners, matching zero padding) and the point's attention weight.
template <typename coord_t>
struct PointGrad {
  coord_t loc_x;
  coord_t loc_y;
  coord_t attn;
};

template <typename coord_t>
MMGDINO_HD PointGrad<coord_t> point_gradient(const BilinearTaps<coord_t>& taps, const coord_t corner_dot[4],
                                             coord_t attn, int64_t height, int64_t width) {
  const coord_t lh = taps.frac_h;
  const coord_t lw = taps.frac_w;
  const coord_t hh = coord_t(1) - lh;
  const coord_t hw = coord_t(1) - lw;
  // d(sample)/d(w_im) and d(sample)/d(h_im) of the bilinear blend; w_im = x * width - 0.5.
  const coord_t d_w = hh * (corner_dot[1] - corner_dot[0]) + lh * (corner_dot[3] - corner_dot[2]);
  const coord_t d_h = hw * (corner_dot[2] - corner_dot[0]) + lw * (corner_dot[3] - corner_dot[1]);
  PointGrad<coord_t> g;
  g.loc_x = attn * static_cast<coord_t>(width) * d_w;
  g.loc_y = attn * static_cast<coord_t>(height) * d_h;
  g.attn = taps.weight[0] * corner_dot[0] + taps.weight[1] * corner_dot[1] + taps.weight[2] * corner_dot[2] +
           taps.weight[3] * corner_dot[3];
  return g;
}

}  // namespace mmgdino
