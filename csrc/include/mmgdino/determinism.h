// torch.use_deterministic_algorithms for the kernels that scatter with float atomics. ATen's alertNotDeterministic
// has no stable form, so the setting is read where it lives, in Python (limited API): raise as ATen would, or warn
// under warn_only=True. A caller without a Python interpreter (a C++-only program) has no such setting to honour.
#pragma once

#include <Python.h>

#include <stdexcept>
#include <string>

namespace mmgdino {
namespace detail {

// 1 or 0: torch.<name>(); -1 when the call failed (the Python error is cleared).
inline int torch_flag(PyObject* torch, const char* name) {
  PyObject* result = PyObject_CallMethod(torch, name, nullptr);
  const int flag = result == nullptr ? -1 : PyObject_IsTrue(result);
  Py_XDECREF(result);
  if (flag < 0) PyErr_Clear();
  return flag;
}

}  // namespace detail

inline void alert_not_deterministic(const char* op) {
  if (!Py_IsInitialized()) return;
  const std::string message = std::string(op) +
                              " does not have a deterministic implementation, but you set "
                              "'torch.use_deterministic_algorithms(True)'. You can turn off determinism just for this "
                              "operation, or you can use the 'warn_only=True' option";
  bool raise = false;
  const PyGILState_STATE gil = PyGILState_Ensure();
  if (PyObject* torch = PyImport_ImportModule("torch")) {
    if (detail::torch_flag(torch, "are_deterministic_algorithms_enabled") == 1) {
      // Under warnings-as-errors the warning fails, and so does the call, as ATen's would.
      raise = detail::torch_flag(torch, "is_deterministic_algorithms_warn_only_enabled") != 1 ||
              PyErr_WarnEx(PyExc_UserWarning, message.c_str(), 1) < 0;
      PyErr_Clear();
    }
    Py_DECREF(torch);
  } else {
    PyErr_Clear();
  }
  PyGILState_Release(gil);
  if (raise) throw std::runtime_error(message);
}

}  // namespace mmgdino
