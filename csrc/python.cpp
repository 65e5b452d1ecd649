// The Python module contnet._C: importing it loads this library and its static op
// registrations (csrc/ops.cpp and the kernels). It has one function of its own, the
// epilogue's entry for eager calls:
//
//   contnet._C.rk_epilogue(y, bias, act, scale, bases, terms, h, coeffs, return_k)
//
// the op torch.ops.contnet.rk_epilogue.default calls, through the same dispatcher (autograd,
// the device's kernel, Python dispatch modes, the profiler, tracing), with the arguments
// read directly from the Python objects: torch.ops first converts every argument to a boxed
// value against the schema, host time paid by every stage of an integration (the figures
// are in bench/README.md). Anything but plain tensors, Python numbers and lists or tuples of tensors and
// numbers (a tensor subclass, a torch function mode, keyword arguments, a wrong type) goes
// to torch.ops unchanged, which gives it the behaviour and the errors it gives any call.
#include <Python.h>  // first, as Python asks

#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/core/Tensor.h>
#include <pybind11/pybind11.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/object_ptr.h>

#include <optional>
#include <vector>

#include "contnet/dispatch.h"

namespace contnet {

namespace {

// A plain tensor (torch.Tensor or nn.Parameter, no subclass with a __torch_function__).
bool plain_tensor(PyObject* o) { return THPVariable_CheckExact(o); }

bool tensor_list(PyObject* seq, std::vector<at::Tensor>& out) {
  if (!PyList_CheckExact(seq) && !PyTuple_CheckExact(seq)) return false;
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  PyObject** items = PySequence_Fast_ITEMS(seq);
  out.reserve(n);
  for (Py_ssize_t i = 0; i < n; ++i) {
    if (!plain_tensor(items[i])) return false;
    out.push_back(THPVariable_Unpack(items[i]));
  }
  return true;
}

// A Python float, or an int that converts exactly enough (not a bool).
bool real(PyObject* o, double& v) {
  if (PyFloat_CheckExact(o)) {
    v = PyFloat_AS_DOUBLE(o);
    return true;
  }
  if (PyLong_CheckExact(o)) {
    v = PyLong_AsDouble(o);
    if (v == -1.0 && PyErr_Occurred()) {
      PyErr_Clear();
      return false;
    }
    return true;
  }
  return false;
}

bool real_list(PyObject* seq, std::vector<double>& out) {
  if (!PyList_CheckExact(seq) && !PyTuple_CheckExact(seq)) return false;
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  PyObject** items = PySequence_Fast_ITEMS(seq);
  out.resize(n);
  for (Py_ssize_t i = 0; i < n; ++i)
    if (!real(items[i], out[i])) return false;
  return true;
}

// torch.ops.contnet.rk_epilogue.default, looked up on first use (a new reference kept)
PyObject* torch_ops_epilogue() {
  static PyObject* fn = nullptr;
  if (fn) return fn;
  PyObject* obj = PyImport_ImportModule("torch");
  for (const char* name : {"ops", "contnet", "rk_epilogue", "default"}) {
    if (!obj) return nullptr;
    PyObject* next = PyObject_GetAttrString(obj, name);
    Py_DECREF(obj);
    obj = next;
  }
  fn = obj;
  return fn;
}

PyObject* rk_epilogue(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  HANDLE_TH_ERRORS
  std::vector<at::Tensor> bases, terms;
  std::vector<double> coeffs;
  double scale = 0.0, h = 0.0;
  const bool plain = nargs == 9 && kwnames == nullptr && plain_tensor(args[0]) &&
                     (args[1] == Py_None || plain_tensor(args[1])) && PyLong_CheckExact(args[2]) &&
                     real(args[3], scale) && tensor_list(args[4], bases) && tensor_list(args[5], terms) &&
                     real(args[6], h) && real_list(args[7], coeffs) && (args[8] == Py_True || args[8] == Py_False) &&
                     !at::impl::torch_function_mode_enabled();
  int overflow = 0;
  const int64_t act = plain ? PyLong_AsLongLongAndOverflow(args[2], &overflow) : 0;
  if (!plain || overflow != 0) {
    // a Python error is thrown, not returned, so that the handler knows of it (warnings)
    PyObject* fn = torch_ops_epilogue();
    if (!fn) throw python_error();
    PyObject* out = PyObject_Vectorcall(fn, args, nargs, kwnames);
    if (!out) throw python_error();
    return out;
  }
  const at::Tensor y = THPVariable_Unpack(args[0]);  // owned: the GIL is released below
  const std::optional<at::Tensor> bias =
      args[1] == Py_None ? std::nullopt : std::optional<at::Tensor>(THPVariable_Unpack(args[1]));
  std::vector<at::Tensor> outs;
  {
    pybind11::gil_scoped_release no_gil;
    outs = rk_epilogue_op(y, bias, act, scale, bases, terms, h, coeffs, args[8] == Py_True, /*return_mask=*/false);
  }
  THPObjectPtr list(PyList_New(static_cast<Py_ssize_t>(outs.size())));  // torch.ops returns a list
  if (!list) throw python_error();
  for (size_t i = 0; i < outs.size(); ++i) {
    PyObject* t = THPVariable_Wrap(std::move(outs[i]));
    if (!t) throw python_error();
    PyList_SET_ITEM(list.get(), static_cast<Py_ssize_t>(i), t);
  }
  return list.release();
  END_HANDLE_TH_ERRORS
}

PyMethodDef methods[] = {
    {"rk_epilogue", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&rk_epilogue)),
     METH_FASTCALL | METH_KEYWORDS,
     "rk_epilogue(y, bias, act, scale, bases, terms, h, coeffs, return_k) -> list[Tensor]: "
     "torch.ops.contnet.rk_epilogue.default with less host time a call (see csrc/python.cpp)"},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace
}  // namespace contnet

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "contnet kernels, registered as torch.ops.contnet", -1, contnet::methods};
  return PyModule_Create(&module_def);
}
}
