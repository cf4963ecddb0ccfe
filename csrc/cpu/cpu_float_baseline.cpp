#include "cpu_float.h"

namespace mmgdino {
namespace cpu_baseline {
#include "cpu_float_kernels.inc"
}  // namespace cpu_baseline
}  // namespace mmgdino
