// What the build recorded about itself through setup.py's defines.
#pragma once

#include <string>

#define MMGDINO_STRINGIFY(x) #x
#define MMGDINO_EXPAND_STRINGIFY(x) MMGDINO_STRINGIFY(x)

namespace mmgdino {

// TORCH_CUDA_ARCH_LIST of the build, "" without CUDA kernels. setup.py passes it with "_" between the entries
// (";" and quotes would not survive the shell of the ninja build); arch_list() gives the usual form.
#ifdef MMGDINO_CUDA_ARCH_LIST
inline constexpr const char* kCudaArchTokens = MMGDINO_EXPAND_STRINGIFY(MMGDINO_CUDA_ARCH_LIST);
#else
inline constexpr const char* kCudaArchTokens = "";
#endif

inline std::string cuda_arch_list() {
  std::string list = kCudaArchTokens;
  for (char& c : list) c = c == '_' ? ';' : c;
  return list;
}

}  // namespace mmgdino
