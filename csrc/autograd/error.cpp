// Autograd of the error-estimate ops. The controller calls them without gradients (no graph,
// no saved data); their derivative, for whoever differentiates an error estimate, is
// composite ATen arithmetic (itself differentiable), in float for float16/bfloat16:
//
//   r = err / sc (0 where err == 0), sc = rtol max(|x|, |x_next|) + atol, sq_s = mean_s r^2
//   d sq_s / d err = 2 r / (m sc),  d sq_s / d sc = -2 r^2 / (m sc)
//
// and through sc to x and x_next as torch.maximum and abs pass gradients (a tie halves it).
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "contnet/dispatch.h"
#include "contnet/rk_combine.h"

namespace contnet {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct ErrorGrads {
  at::Tensor x, x_next;
  std::vector<at::Tensor> terms;
};

// `c` times `t` summed over the terms whose h * c does not vanish (as the kernels skip them).
at::Tensor weighted_sum(const std::vector<at::Tensor>& ts, double h, at::ArrayRef<double> c, const at::Tensor& like,
                        bool in_double) {
  at::Tensor out = at::zeros_like(like);
  for (size_t j = 0; j < ts.size(); ++j)
    if (!coefficient_vanishes(h * c[j], in_double)) out = out + ts[j] * (h * c[j]);
  return out;
}

// Gradients of sq (grad_sq, or undefined) for x, x_next and the terms through the error.
ErrorGrads norm_grads(const at::Tensor& grad_sq, const at::Tensor& x, const at::Tensor& x_next, at::TensorList terms,
                      double h, at::ArrayRef<double> e, double rtol, double atol) {
  const bool in_double = x.scalar_type() == at::kDouble;
  const auto wide = in_double ? at::kDouble : at::kFloat;
  const at::Tensor X = x.to(wide), XN = x_next.to(wide);
  std::vector<at::Tensor> ks;
  for (const auto& t : terms) ks.push_back(t.to(wide));
  ErrorGrads g;
  if (!grad_sq.defined() || x.sym_numel() == 0) {
    g.x = at::zeros_like(X), g.x_next = at::zeros_like(X);
    for (const auto& k : ks) g.terms.push_back(at::zeros_like(k));
    return g;
  }
  const at::Tensor err = weighted_sum(ks, h, e, X, in_double);
  const at::Tensor ax = X.abs(), an = XN.abs();
  const at::Tensor sc = at::maximum(ax, an) * rtol + atol;
  const at::Tensor nz = err != 0;
  const at::Tensor zero = at::zeros({}, X.options());
  const at::Tensor r = at::where(nz, err / sc, zero);
  // sizes as SymInts (traced with symbolic shapes); m, the elements per sample, as a tensor
  std::vector<c10::SymInt> per_sample(X.dim(), 1);
  per_sample[0] = X.sym_size(0);
  const at::Tensor m = at::ones_like(X).reshape_symint({X.sym_size(0), -1}).sum(1).view_symint(per_sample);
  const at::Tensor G = grad_sq.to(wide).view_symint(per_sample) * 2.0 / m;
  const at::Tensor g_err = at::where(nz, G * r / sc, zero);
  const at::Tensor g_sc = at::where(nz, -G * r * r / sc, zero) * rtol;
  const at::Tensor tie = (ax == an).to(wide) * 0.5;
  g.x = g_sc * ((ax > an).to(wide) + tie) * X.sgn();
  g.x_next = g_sc * ((an > ax).to(wide) + tie) * XN.sgn();
  for (size_t j = 0; j < ks.size(); ++j)
    g.terms.push_back(coefficient_vanishes(h * e[j], in_double) ? at::zeros_like(g_err) : g_err * (h * e[j]));
  return g;
}

// What both backwards read: the step's operands and settings.
void save_error(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& x_next, at::TensorList terms, double h,
                at::ArrayRef<double> e, double rtol, double atol) {
  ctx->saved_data["h"] = h;
  ctx->saved_data["e"] = e.vec();
  ctx->saved_data["rtol"] = rtol;
  ctx->saved_data["atol"] = atol;
  std::vector<at::Tensor> saved{x, x_next};
  saved.insert(saved.end(), terms.begin(), terms.end());
  ctx->save_for_backward(saved);
}

// The gradients of sq (grad_sq) from what save_error kept, and the saved `x`.
ErrorGrads saved_grads(AutogradContext* ctx, const at::Tensor& grad_sq, at::Tensor& x) {
  auto saved = ctx->get_saved_variables();
  x = saved[0];
  const std::vector<at::Tensor> terms(saved.begin() + 2, saved.end());
  return norm_grads(grad_sq, x, saved[1], terms, ctx->saved_data["h"].toDouble(), ctx->saved_data["e"].toDoubleVector(),
                    ctx->saved_data["rtol"].toDouble(), ctx->saved_data["atol"].toDouble());
}

struct StepError : public torch::autograd::Function<StepError> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, at::TensorList terms, double h,
                               at::ArrayRef<double> b, at::ArrayRef<double> e, double rtol, double atol) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [x_next, sq] = rk_step_error_op(x, terms, h, b, e, rtol, atol);
    ctx->saved_data["b"] = b.vec();
    save_error(ctx, x, x_next, terms, h, e, rtol, atol);
    return {x_next, sq};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const double h = ctx->saved_data["h"].toDouble();
    const auto b = ctx->saved_data["b"].toDoubleVector();
    at::Tensor x;
    ErrorGrads g = saved_grads(ctx, grads[1], x);
    const bool in_double = x.scalar_type() == at::kDouble;
    // x_next = x + h sum_j b_j k_j carries its gradient to x and the terms
    at::Tensor g_next = grads[0].defined() ? g.x_next + grads[0].to(g.x_next.scalar_type()) : g.x_next;
    variable_list out{(g.x + g_next).to(x.scalar_type())};
    for (size_t j = 0; j < g.terms.size(); ++j) {
      at::Tensor gk = g.terms[j];
      if (!coefficient_vanishes(h * b[j], in_double)) gk = gk + g_next * (h * b[j]);
      out.push_back(gk.to(x.scalar_type()));
    }
    for (int i = 0; i < 5; ++i) out.emplace_back();  // h, b, e, rtol, atol
    return out;
  }
};

struct ErrorNorm : public torch::autograd::Function<ErrorNorm> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& x_next, at::TensorList terms,
                            double h, at::ArrayRef<double> e, double rtol, double atol) {
    at::AutoDispatchBelowADInplaceOrView guard;
    save_error(ctx, x, x_next, terms, h, e, rtol, atol);
    return rk_error_norm_op(x, x_next, terms, h, e, rtol, atol);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    at::Tensor x;
    ErrorGrads g = saved_grads(ctx, grads[0], x);
    variable_list out{g.x.to(x.scalar_type()), g.x_next.to(x.scalar_type())};
    for (auto& t : g.terms) out.push_back(t.to(x.scalar_type()));
    for (int i = 0; i < 4; ++i) out.emplace_back();  // h, e, rtol, atol
    return out;
  }
};

std::tuple<at::Tensor, at::Tensor> step_error_autograd(const at::Tensor& x, at::TensorList terms, double h,
                                                       at::ArrayRef<double> b, at::ArrayRef<double> e, double rtol,
                                                       double atol) {
  if (!needs_autograd({&x}, {terms})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return rk_step_error_op(x, terms, h, b, e, rtol, atol);
  }
  auto outs = StepError::apply(x, terms, h, b, e, rtol, atol);
  return {outs[0], outs[1]};
}

at::Tensor error_norm_autograd(const at::Tensor& x, const at::Tensor& x_next, at::TensorList terms, double h,
                               at::ArrayRef<double> e, double rtol, double atol) {
  if (!needs_autograd({&x, &x_next}, {terms})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return rk_error_norm_op(x, x_next, terms, h, e, rtol, atol);
  }
  return ErrorNorm::apply(x, x_next, terms, h, e, rtol, atol);
}

}  // namespace

TORCH_LIBRARY_IMPL(contnet, Autograd, m) {
  m.impl("rk_step_error", &step_error_autograd);
  m.impl("rk_error_norm", &error_norm_autograd);
}

}  // namespace contnet
