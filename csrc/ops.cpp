// The one declaration of every contnet op schema. Kernels register their implementations
// per backend in cpu/ and cuda/; autograd and fake (meta) kernels are registered from
// Python (contnet/ops.py). Importing contnet._C runs these registrations.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// An empty Python module: its import loads this library and its static registrations.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "contnet kernels, registered as torch.ops.contnet", -1,
      nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(contnet, m) {
  // out = x + h * sum_j coeffs[j] * terms[j]; coefficients by value.
  m.def("rk_combine(Tensor x, Tensor[] terms, float h, float[] coeffs) -> Tensor");
  // grad_terms[j] = h * coeffs[j] * grad (the gradient for x is grad itself).
  m.def("rk_combine_backward(Tensor grad, float h, float[] coeffs) -> Tensor[]");
}
