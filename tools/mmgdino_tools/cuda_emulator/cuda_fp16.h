// Host stand-in for CUDA's half type: storage plus the round-to-nearest-even conversions the kernels use.
#pragma once
#include "simt.h"

struct __half {
  uint16_t bits;
};

inline float __half2float(__half h) {
  _Float16 f;
  memcpy(&f, &h.bits, 2);
  return static_cast<float>(f);
}

inline __half __float2half_rn(float x) {
  const _Float16 f = static_cast<_Float16>(x);  // IEEE round to nearest even
  __half h;
  memcpy(&h.bits, &f, 2);
  return h;
}
