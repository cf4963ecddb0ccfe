// The mmgdino._C Python module. Operator schemas live in Python (mmgdino/ops/_library.py), which defines them
// before importing this module; the translation units here only register kernels for dispatch keys.
#include <Python.h>

#include "mmgdino/build_info.h"
#include "cpu/cpu_float.h"

namespace {

#ifdef MMGDINO_WITH_CUDA
constexpr int kWithCuda = 1;
#else
constexpr int kWithCuda = 0;
#endif

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "mmgdino compiled kernels", -1, nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
  if (PyModule_AddIntConstant(module, "with_cuda", kWithCuda) < 0 ||
      PyModule_AddStringConstant(module, "cuda_arch_list", mmgdino::cuda_arch_list().c_str()) < 0 ||
      PyModule_AddStringConstant(module, "cpu_isa", mmgdino::cpu_isa()) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
