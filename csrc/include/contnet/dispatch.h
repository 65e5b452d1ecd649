// The ops called through the dispatcher, from their autograd kernels (csrc/autograd/) and
// from the Python entry of csrc/python.cpp: each a typed handle looked up once. And the
// test that decides whether a call goes through autograd at all.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <initializer_list>
#include <optional>
#include <tuple>
#include <vector>

namespace contnet {

using EpilogueSig = std::vector<at::Tensor>(const at::Tensor&, const std::optional<at::Tensor>&, int64_t, double,
                                            at::TensorList, at::TensorList, double, at::ArrayRef<double>, bool, bool);
using EpilogueBackwardSig = std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor>(
    at::TensorList, const std::optional<at::Tensor>&, const at::Tensor&, const std::optional<at::Tensor>&, int64_t,
    double, int64_t, double, at::ArrayRef<double>);

template <typename Sig>
c10::TypedOperatorHandle<Sig> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

inline std::vector<at::Tensor> rk_epilogue_op(const at::Tensor& y, const std::optional<at::Tensor>& bias, int64_t act,
                                              double scale, at::TensorList bases, at::TensorList terms, double h,
                                              at::ArrayRef<double> coeffs, bool return_k, bool return_mask) {
  static auto f = op<EpilogueSig>("contnet::rk_epilogue");
  return f.call(y, bias, act, scale, bases, terms, h, coeffs, return_k, return_mask);
}

inline at::Tensor rk_combine_op(const at::Tensor& x, at::TensorList terms, double h, at::ArrayRef<double> c) {
  static auto f = op<at::Tensor(const at::Tensor&, at::TensorList, double, at::ArrayRef<double>)>("contnet::rk_combine");
  return f.call(x, terms, h, c);
}

inline std::vector<at::Tensor> rk_combine_backward_op(const at::Tensor& g, double h, at::ArrayRef<double> c) {
  static auto f = op<std::vector<at::Tensor>(const at::Tensor&, double, at::ArrayRef<double>)>("contnet::rk_combine_backward");
  return f.call(g, h, c);
}

inline at::Tensor learned_op(const at::Tensor& x, at::TensorList terms, double h, const at::Tensor& c) {
  static auto f = op<at::Tensor(const at::Tensor&, at::TensorList, double, const at::Tensor&)>("contnet::rk_combine_learned");
  return f.call(x, terms, h, c);
}

inline std::tuple<std::vector<at::Tensor>, at::Tensor> learned_backward_op(const at::Tensor& g, at::TensorList terms, double h,
                                                                    const at::Tensor& c) {
  static auto f = op<std::tuple<std::vector<at::Tensor>, at::Tensor>(const at::Tensor&, at::TensorList, double, const at::Tensor&)>(
      "contnet::rk_combine_learned_backward");
  return f.call(g, terms, h, c);
}

inline std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor> rk_epilogue_backward_op(
    at::TensorList grads, const std::optional<at::Tensor>& grad_k, const at::Tensor& y,
    const std::optional<at::Tensor>& bias, int64_t act, double scale, int64_t n_terms, double h,
    at::ArrayRef<double> coeffs) {
  static auto f = op<EpilogueBackwardSig>("contnet::rk_epilogue_backward");
  return f.call(grads, grad_k, y, bias, act, scale, n_terms, h, coeffs);
}

inline std::vector<at::Tensor> basis_interp_op(const at::Tensor& phi, at::TensorList thetas) {
  static auto f = op<std::vector<at::Tensor>(const at::Tensor&, at::TensorList)>("contnet::basis_interp");
  return f.call(phi, thetas);
}

using StepErrorSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, at::TensorList, double, at::ArrayRef<double>,
                                                        at::ArrayRef<double>, double, double);
using ErrorNormSig = at::Tensor(const at::Tensor&, const at::Tensor&, at::TensorList, double, at::ArrayRef<double>,
                                double, double);

inline std::tuple<at::Tensor, at::Tensor> rk_step_error_op(const at::Tensor& x, at::TensorList terms, double h,
                                                           at::ArrayRef<double> b, at::ArrayRef<double> e,
                                                           double rtol, double atol) {
  static auto f = op<StepErrorSig>("contnet::rk_step_error");
  return f.call(x, terms, h, b, e, rtol, atol);
}

inline at::Tensor rk_error_norm_op(const at::Tensor& x, const at::Tensor& x_next, at::TensorList terms, double h,
                                   at::ArrayRef<double> e, double rtol, double atol) {
  static auto f = op<ErrorNormSig>("contnet::rk_error_norm");
  return f.call(x, x_next, terms, h, e, rtol, atol);
}

// Whether a call must go through autograd: grad mode on and an input that requires grad; or
// an input carrying a forward-mode tangent, or a functorch transform active, neither of
// which the ops support: through autograd (torch::autograd::Function or the not-implemented
// fallback) those raise clear errors, where the kernels alone would drop the tangents.
// When not, the kernels run directly (no graph node, no saved data, no boxing).
inline bool needs_autograd(std::initializer_list<const at::Tensor*> ts, std::initializer_list<at::TensorList> lists = {}) {
  if (c10::impl::tls_is_dispatch_key_included(c10::DispatchKey::FuncTorchDynamicLayerFrontMode)) return true;
  const bool grad_mode = at::GradMode::is_enabled();
  auto needs = [grad_mode](const at::Tensor& t) {
    return t.defined() && ((grad_mode && t.requires_grad()) || t._fw_grad(/*level=*/0).defined());
  };
  for (const at::Tensor* t : ts)
    if (needs(*t)) return true;
  for (const auto& l : lists)
    for (const auto& t : l)
      if (needs(t)) return true;
  return false;
}

}  // namespace contnet
