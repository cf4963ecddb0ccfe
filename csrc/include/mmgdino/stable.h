// What the compiled operators use of LibTorch: its stable ABI only (torch/csrc/stable, torch/headeronly), so one
// binary runs with every torch from the target release on (setup.py passes TORCH_TARGET_VERSION; see
// mmgdino/_cuda_build.py). Every translation unit that touches tensors includes this header and nothing from ATen
// or c10.
#pragma once

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace mmgdino {

using Tensor = torch::stable::Tensor;
using ScalarType = torch::headeronly::ScalarType;
using Half = torch::headeronly::Half;
using BFloat16 = torch::headeronly::BFloat16;

// A kernel's exceptions reach Python through LibTorch's stable boundary, where every std::exception becomes a
// RuntimeError: the message has to say everything (argument, expected, got). The Python wrappers run the same
// checks first (mmgdino/ops/_checks.py) and raise ValueError / TypeError there.
template <typename... Args>
std::string message(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

#define MMGDINO_CHECK(cond, ...)                                            \
  do {                                                                      \
    if (!(cond)) throw std::runtime_error(::mmgdino::message(__VA_ARGS__)); \
  } while (0)

// "(2, 3, 4)"
inline std::string shape_str(const Tensor& t) {
  std::ostringstream os;
  os << '(';
  const auto sizes = t.sizes();
  for (size_t i = 0; i < sizes.size(); ++i) os << (i ? ", " : "") << sizes[i];
  os << (sizes.size() == 1 ? ",)" : ")");
  return os.str();
}

// "cpu", "cuda:0", as torch.device prints them.
inline std::string device_str(const Tensor& t) {
  const auto device = t.device();
  std::string name;
  switch (device.type()) {
    case torch::headeronly::DeviceType::CPU: name = "cpu"; break;
    case torch::headeronly::DeviceType::CUDA: name = "cuda"; break;
    case torch::headeronly::DeviceType::Meta: name = "meta"; break;
    default: name = message("device type ", static_cast<int>(device.type())); break;
  }
  return device.index() >= 0 ? message(name, ':', static_cast<int>(device.index())) : name;
}

// The four dtypes the operators take (message names them as torch does: float32, not Float).
inline bool is_supported_float(ScalarType t) {
  return t == ScalarType::Double || t == ScalarType::Float || t == ScalarType::Half || t == ScalarType::BFloat16;
}

inline const char* dtype_name(ScalarType t) {
  switch (t) {
    case ScalarType::Double: return "float64";
    case ScalarType::Float: return "float32";
    case ScalarType::Half: return "float16";
    case ScalarType::BFloat16: return "bfloat16";
    case ScalarType::Long: return "int64";
    case ScalarType::Int: return "int32";
    case ScalarType::Bool: return "bool";
    default: return torch::headeronly::toString(t);
  }
}

// The arithmetic type of a storage type: float32 for the 16-bit floats, the type itself otherwise.
template <typename T>
struct OpMath {
  using type = T;
};
template <>
struct OpMath<Half> {
  using type = float;
};
template <>
struct OpMath<BFloat16> {
  using type = float;
};

inline ScalarType op_math_dtype(ScalarType t) {
  return t == ScalarType::Half || t == ScalarType::BFloat16 ? ScalarType::Float : t;
}

// fn(T{}) for the C++ type T of a floating dtype (double, float, Half, BFloat16).
template <typename Fn>
void dispatch_floating(ScalarType t, const char* op, Fn&& fn) {
  switch (t) {
    case ScalarType::Double: fn(double{}); break;
    case ScalarType::Float: fn(float{}); break;
    case ScalarType::Half: fn(Half{}); break;
    case ScalarType::BFloat16: fn(BFloat16{}); break;
    default: throw std::runtime_error(message(op, ": unsupported dtype ", dtype_name(t)));
  }
}

template <typename T>
constexpr ScalarType dtype_of();
template <>
constexpr ScalarType dtype_of<float>() {
  return ScalarType::Float;
}
template <>
constexpr ScalarType dtype_of<double>() {
  return ScalarType::Double;
}

// The value of a 0-dim host tensor as T (float or double), whatever its floating dtype.
template <typename T>
T host_scalar(const Tensor& t) {
  return *torch::stable::to(t, dtype_of<T>()).template const_data_ptr<T>();
}

}  // namespace mmgdino
