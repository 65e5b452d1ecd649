// Autograd of the stage-accumulation ops, in C++: a forward call costs no Python, and each
// backward is itself a contnet op (called through the dispatcher, so it runs on the
// tensors' device and has its own derivative where double backward applies).
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "contnet/dispatch.h"
#include "contnet/rk_combine.h"

namespace contnet {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct RkCombine : public torch::autograd::Function<RkCombine> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, at::TensorList terms, double h,
                            at::ArrayRef<double> coeffs) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["h"] = h;
    ctx->saved_data["coeffs"] = coeffs.vec();
    return rk_combine_op(x, terms, h, coeffs);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const double h = ctx->saved_data["h"].toDouble();
    const auto coeffs = ctx->saved_data["coeffs"].toDoubleVector();
    variable_list out{grads[0]};
    for (auto& g : rk_combine_backward_op(grads[0], h, coeffs)) out.push_back(g);
    out.emplace_back();  // h
    out.emplace_back();  // coeffs
    return out;
  }
};

// The backward is linear in its input: its derivative contracts the output gradients.
struct RkCombineBackward : public torch::autograd::Function<RkCombineBackward> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad, double h, at::ArrayRef<double> coeffs) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["h"] = h;
    ctx->saved_data["coeffs"] = coeffs.vec();
    return rk_combine_backward_op(grad, h, coeffs);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const double h = ctx->saved_data["h"].toDouble();
    const auto coeffs = ctx->saved_data["coeffs"].toDoubleVector();
    std::vector<at::Tensor> gs;
    std::vector<double> cs;
    for (size_t j = 0; j < grads.size(); ++j) {
      if (grads[j].defined()) gs.push_back(grads[j]), cs.push_back(coeffs[j]);
    }
    at::Tensor g = gs.empty() ? at::Tensor() : rk_combine_op(at::zeros_like(gs[0]), gs, h, cs);
    return {g, at::Tensor(), at::Tensor()};
  }
};

// ---------------------------------------------------------------------------- learned coefficients
struct RkCombineLearned : public torch::autograd::Function<RkCombineLearned> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, at::TensorList terms, double h,
                            const at::Tensor& coeffs) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["h"] = h;
    std::vector<at::Tensor> saved{coeffs};
    saved.insert(saved.end(), terms.begin(), terms.end());
    ctx->save_for_backward(saved);
    return learned_op(x, terms, h, coeffs);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const double h = ctx->saved_data["h"].toDouble();
    auto saved = ctx->get_saved_variables();
    const at::Tensor coeffs = saved[0];
    const std::vector<at::Tensor> terms(saved.begin() + 1, saved.end());
    auto [grad_terms, grad_coeffs] = learned_backward_op(grads[0], terms, h, coeffs);
    variable_list out{grads[0]};
    out.insert(out.end(), grad_terms.begin(), grad_terms.end());
    out.emplace_back();  // h
    out.push_back(grad_coeffs);
    return out;
  }
};

// (grad_terms[j] = h c_j g, grad_coeffs[j] = h <t_j, g>) is bilinear; its derivative in
// composite ATen ops (double backward only).
struct RkCombineLearnedBackward : public torch::autograd::Function<RkCombineLearnedBackward> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad, at::TensorList terms, double h,
                               const at::Tensor& coeffs) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["h"] = h;
    std::vector<at::Tensor> saved{grad, coeffs};
    saved.insert(saved.end(), terms.begin(), terms.end());
    ctx->save_for_backward(saved);
    auto [gt, gc] = learned_backward_op(grad, terms, h, coeffs);
    gt.push_back(gc);
    return gt;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const double h = ctx->saved_data["h"].toDouble();
    auto saved = ctx->get_saved_variables();
    const at::Tensor g = saved[0], c = saved[1];
    const size_t n = saved.size() - 2;
    const at::Tensor gc_bar = grads[n];
    at::Tensor d_g = at::zeros_like(g);
    std::vector<at::Tensor> d_c;
    variable_list out{at::Tensor()};
    for (size_t j = 0; j < n; ++j) {
      const at::Tensor& t = saved[2 + j];
      const at::Tensor& gt_bar = grads[j];
      if (gt_bar.defined()) {
        d_g = d_g + (c[j] * h).to(g.scalar_type()) * gt_bar;
        d_c.push_back(((gt_bar * g).sum() * h).to(c.scalar_type()));
      } else {
        d_c.push_back(at::zeros({}, c.options()));
      }
      if (gc_bar.defined()) d_g = d_g + (gc_bar[j] * h).to(g.scalar_type()) * t;
      out.push_back(gc_bar.defined() ? (gc_bar[j] * h).to(g.scalar_type()) * g : at::Tensor());
    }
    out[0] = d_g;
    out.emplace_back();  // h
    out.push_back(n == 0 ? at::zeros({0}, c.options()) : at::stack(d_c));
    return out;
  }
};

at::Tensor rk_combine_autograd(const at::Tensor& x, at::TensorList terms, double h, at::ArrayRef<double> c) {
  if (!needs_autograd({&x}, {terms})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return rk_combine_op(x, terms, h, c);
  }
  return RkCombine::apply(x, terms, h, c);
}

std::vector<at::Tensor> rk_combine_backward_autograd(const at::Tensor& g, double h, at::ArrayRef<double> c) {
  if (!needs_autograd({&g})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return rk_combine_backward_op(g, h, c);
  }
  return RkCombineBackward::apply(g, h, c);
}

at::Tensor learned_autograd(const at::Tensor& x, at::TensorList terms, double h, const at::Tensor& c) {
  if (!needs_autograd({&x, &c}, {terms})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return learned_op(x, terms, h, c);
  }
  return RkCombineLearned::apply(x, terms, h, c);
}

std::tuple<std::vector<at::Tensor>, at::Tensor> learned_backward_autograd(const at::Tensor& g, at::TensorList terms,
                                                                          double h, const at::Tensor& c) {
  if (!needs_autograd({&g, &c}, {terms})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return learned_backward_op(g, terms, h, c);
  }
  auto outs = RkCombineLearnedBackward::apply(g, terms, h, c);
  at::Tensor gc = outs.back();
  outs.pop_back();
  return {outs, gc};
}

}  // namespace

TORCH_LIBRARY_IMPL(contnet, Autograd, m) {
  m.impl("rk_combine", &rk_combine_autograd);
  m.impl("rk_combine_backward", &rk_combine_backward_autograd);
  m.impl("rk_combine_learned", &learned_autograd);
  m.impl("rk_combine_learned_backward", &learned_backward_autograd);
}

}  // namespace contnet
