// Autograd of every contnet op, in C++: a forward call costs no Python, and each backward
// is itself a contnet op (called through the dispatcher, so it runs on the tensors'
// device and has its own derivative where double backward applies).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <initializer_list>
#include <optional>
#include <tuple>
#include <vector>

#include "contnet/activations.h"
#include "contnet/checks.h"
#include "contnet/layout.h"
#include "contnet/rk_combine.h"

namespace contnet {

using EpilogueSig = std::vector<at::Tensor>(const at::Tensor&, const std::optional<at::Tensor>&, int64_t, double,
                                            at::TensorList, at::TensorList, double, at::ArrayRef<double>, bool, bool);
using EpilogueBackwardSig = std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor>(
    at::TensorList, const std::optional<at::Tensor>&, const at::Tensor&, const std::optional<at::Tensor>&, int64_t,
    double, int64_t, double, at::ArrayRef<double>);

// The epilogue op through the dispatcher (from its autograd kernel and from the Python
// entry of csrc/python.cpp).
std::vector<at::Tensor> rk_epilogue_op(const at::Tensor& y, const std::optional<at::Tensor>& bias, int64_t act,
                                       double scale, at::TensorList bases, at::TensorList terms, double h,
                                       at::ArrayRef<double> coeffs, bool return_k, bool return_mask) {
  static auto f = c10::Dispatcher::singleton().findSchemaOrThrow("contnet::rk_epilogue", "").typed<EpilogueSig>();
  return f.call(y, bias, act, scale, bases, terms, h, coeffs, return_k, return_mask);
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <typename Sig>
c10::TypedOperatorHandle<Sig> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

at::Tensor rk_combine_op(const at::Tensor& x, at::TensorList terms, double h, at::ArrayRef<double> c) {
  static auto f = op<at::Tensor(const at::Tensor&, at::TensorList, double, at::ArrayRef<double>)>("contnet::rk_combine");
  return f.call(x, terms, h, c);
}

std::vector<at::Tensor> rk_combine_backward_op(const at::Tensor& g, double h, at::ArrayRef<double> c) {
  static auto f = op<std::vector<at::Tensor>(const at::Tensor&, double, at::ArrayRef<double>)>("contnet::rk_combine_backward");
  return f.call(g, h, c);
}

at::Tensor learned_op(const at::Tensor& x, at::TensorList terms, double h, const at::Tensor& c) {
  static auto f = op<at::Tensor(const at::Tensor&, at::TensorList, double, const at::Tensor&)>("contnet::rk_combine_learned");
  return f.call(x, terms, h, c);
}

std::tuple<std::vector<at::Tensor>, at::Tensor> learned_backward_op(const at::Tensor& g, at::TensorList terms, double h,
                                                                    const at::Tensor& c) {
  static auto f = op<std::tuple<std::vector<at::Tensor>, at::Tensor>(const at::Tensor&, at::TensorList, double, const at::Tensor&)>(
      "contnet::rk_combine_learned_backward");
  return f.call(g, terms, h, c);
}


std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor> rk_epilogue_backward_op(
    at::TensorList grads, const std::optional<at::Tensor>& grad_k, const at::Tensor& y,
    const std::optional<at::Tensor>& bias, int64_t act, double scale, int64_t n_terms, double h,
    at::ArrayRef<double> coeffs) {
  static auto f = op<EpilogueBackwardSig>("contnet::rk_epilogue_backward");
  return f.call(grads, grad_k, y, bias, act, scale, n_terms, h, coeffs);
}

std::vector<at::Tensor> basis_interp_op(const at::Tensor& phi, at::TensorList thetas) {
  static auto f = op<std::vector<at::Tensor>(const at::Tensor&, at::TensorList)>("contnet::basis_interp");
  return f.call(phi, thetas);
}

// Whether a call must go through autograd: grad mode on and an input that requires grad; or
// an input carrying a forward-mode tangent, or a functorch transform active, neither of
// which the ops support: through autograd (torch::autograd::Function or the not-implemented
// fallback) those raise clear errors, where the kernels alone would drop the tangents.
// When not, the kernels run directly (no graph node, no saved data, no boxing).
bool needs_autograd(std::initializer_list<const at::Tensor*> ts, std::initializer_list<at::TensorList> lists = {}) {
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

// ---------------------------------------------------------------------------- rk_combine
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

// ---------------------------------------------------------------------------- rk_epilogue
// What the backward keeps of y: relu its bool mask (a quarter of y's bytes at float32, and
// y itself can be freed), identity nothing (its derivative does not read y), the others y.
struct RkEpilogue : public torch::autograd::Function<RkEpilogue> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& y, const std::optional<at::Tensor>& bias,
                               int64_t act, double scale, at::TensorList bases, at::TensorList terms, double h,
                               at::ArrayRef<double> coeffs, bool return_k, bool return_mask) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->set_materialize_grads(false);  // unused outputs cost nothing in backward
    // the arguments backward needs, in two entries (each entry of saved_data is a keyed
    // insertion paid on every call): {act, n_bases, n_terms, has_bias, return_k} and
    // {scale, h, coeffs...}
    const bool has_bias = bias.has_value() && bias->defined();
    const bool masked = act == kRelu;
    // and for identity, whether y was channels_last: the layout its gradient keeps
    const bool channels_last = act == kIdentity && dense_format(y) == at::MemoryFormat::ChannelsLast;
    ctx->saved_data["ints"] = std::vector<int64_t>{act, static_cast<int64_t>(bases.size()),
                                                   static_cast<int64_t>(terms.size()), has_bias, return_k,
                                                   channels_last};
    std::vector<double> reals{scale, h};
    reals.insert(reals.end(), coeffs.begin(), coeffs.end());
    ctx->saved_data["reals"] = std::move(reals);
    auto outs = rk_epilogue_op(y, bias, act, scale, bases, terms, h, coeffs, return_k, masked || return_mask);
    const at::Tensor kept = masked ? outs.back() : act == kIdentity ? at::Tensor() : y;
    ctx->save_for_backward({kept, has_bias ? *bias : at::Tensor()});
    if (return_mask) {
      ctx->mark_non_differentiable({outs.back()});
    } else if (masked) {
      outs.pop_back();
    }
    return outs;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto ints = ctx->saved_data["ints"].toIntVector();
    const auto reals = ctx->saved_data["reals"].toDoubleVector();
    const int64_t act = ints[0], n_bases = ints[1], n_terms = ints[2];
    const bool has_bias = ints[3] != 0, return_k = ints[4] != 0;
    const double scale = reals[0], h = reals[1];
    const double* coeffs = reals.data() + 2;
    at::Tensor grad_k = return_k ? grads[n_bases] : at::Tensor();
    // the defined output gradients and their coefficient rows
    std::vector<at::Tensor> gs;
    std::vector<double> rows;
    for (int64_t o = 0; o < n_bases; ++o) {
      if (!grads[o].defined()) continue;
      gs.push_back(grads[o]);
      rows.insert(rows.end(), coeffs + o * (n_terms + 1), coeffs + (o + 1) * (n_terms + 1));
    }
    // one gradient per forward argument: y, bias (undefined when absent), act, scale,
    // bases, terms, h, coeffs, return_k, return_mask
    variable_list out;
    if (gs.empty() && !grad_k.defined()) {
      out.resize(4 + n_bases + n_terms + 4);
      return out;
    }
    // identity kept nothing of y: an output gradient (its shape and dtype) in y's layout
    // stands in for it, taken in place of that gradient so it is made dense once
    at::Tensor y = saved[0];
    if (!y.defined()) {
      at::Tensor& stand_in = gs.empty() ? grad_k : gs[0];
      stand_in = in_format(stand_in, ints[5] != 0 ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
      y = stand_in;
    }
    const std::optional<at::Tensor> bias = has_bias ? std::optional<at::Tensor>(saved[1]) : std::nullopt;
    const std::optional<at::Tensor> gk = grad_k.defined() ? std::optional<at::Tensor>(grad_k) : std::nullopt;
    // whether a gradient reaches k: its own, or an output that read it (a coefficient of k
    // that does not vanish). If none does, y and bias are not on a path to the loss and
    // get no gradient, as autograd of the same ops would give (not 0 * act'(z), NaN where
    // act' is).
    bool k_read = grad_k.defined();
    const bool in_double = (gs.empty() ? grad_k : gs[0]).scalar_type() == at::kDouble;
    for (size_t o = 0; o < gs.size() && !k_read; ++o)
      k_read = !coefficient_vanishes(h * rows[o * (n_terms + 1) + n_terms], in_double);
    // through the autograd key (rk_epilogue_backward_autograd): the kernel itself when no
    // graph is built, else a node that makes a double backward a clear error
    auto [grad_y, grad_terms, grad_bias] = rk_epilogue_backward_op(gs, gk, y, bias, act, scale, n_terms, h, rows);
    out.push_back(k_read ? grad_y : at::Tensor());
    out.push_back(has_bias && k_read ? grad_bias : at::Tensor());
    out.emplace_back();  // act
    out.emplace_back();  // scale
    for (int64_t o = 0; o < n_bases; ++o) out.push_back(grads[o]);
    out.insert(out.end(), grad_terms.begin(), grad_terms.end());
    out.emplace_back();  // h
    out.emplace_back();  // coeffs
    out.emplace_back();  // return_k
    out.emplace_back();  // return_mask
    return out;
  }
};

// ---------------------------------------------------------------------------- basis_interp
struct BasisInterp : public torch::autograd::Function<BasisInterp> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& phi, at::TensorList thetas) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({phi});
    return basis_interp_op(phi, thetas);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor phi_t = ctx->get_saved_variables()[0].t().contiguous();
    std::vector<at::Tensor> defined;
    for (const auto& g : grads)
      if (g.defined()) defined.push_back(g);
    variable_list out{at::Tensor()};  // phi: a constant
    if (defined.empty()) {
      out.resize(1 + grads.size());
      return out;
    }
    if (phi_t.size(1) == 0) {  // no stage times: nothing reached the nodes
      for (const auto& g : grads) {
        if (!g.defined()) {
          out.emplace_back();
          continue;
        }
        std::vector<int64_t> shape(g.sizes().begin(), g.sizes().end());
        shape[0] = phi_t.size(0);
        out.push_back(at::zeros(shape, g.options()));
      }
      return out;
    }
    // the backward is the lookup itself with phi transposed (differentiable again)
    auto back = basis_interp_op(phi_t, defined);
    size_t i = 0;
    for (const auto& g : grads) out.push_back(g.defined() ? back[i++] : at::Tensor());
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

std::vector<at::Tensor> rk_epilogue_autograd(const at::Tensor& y, const std::optional<at::Tensor>& bias, int64_t act,
                                             double scale, at::TensorList bases, at::TensorList terms, double h,
                                             at::ArrayRef<double> coeffs, bool return_k, bool return_mask) {
  const at::Tensor b = bias.has_value() ? *bias : at::Tensor();
  if (!needs_autograd({&y, &b}, {bases, terms})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return rk_epilogue_op(y, bias, act, scale, bases, terms, h, coeffs, return_k, return_mask);
  }
  return RkEpilogue::apply(y, bias, act, scale, bases, terms, h, coeffs, return_k, return_mask);
}

// The epilogue's backward differentiates no further. Under create_graph its outputs get a
// node that, if differentiated, raises an error that says what to do instead.
struct RkEpilogueBackwardOnce : public torch::autograd::Function<RkEpilogueBackwardOnce> {
  static variable_list forward(AutogradContext* ctx, at::TensorList grads, const std::optional<at::Tensor>& grad_k,
                               const at::Tensor& y, const std::optional<at::Tensor>& bias, int64_t act, double scale,
                               int64_t n_terms, double h, at::ArrayRef<double> coeffs) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [grad_y, grad_terms, grad_bias] = rk_epilogue_backward_op(grads, grad_k, y, bias, act, scale, n_terms, h, coeffs);
    variable_list out{grad_y, grad_bias};  // grad_bias undefined without a bias
    out.insert(out.end(), grad_terms.begin(), grad_terms.end());
    return out;
  }

  static variable_list backward(AutogradContext*, variable_list) {
    TORCH_CHECK(false,
                "the fused epilogue's backward (contnet::rk_epilogue_backward) has no derivative: for a "
                "second derivative (a gradient penalty, a Hessian-vector product) run the model under "
                "contnet.ops.use_reference() (the same results in pure PyTorch)");
    return {};
  }
};

std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor> rk_epilogue_backward_autograd(
    at::TensorList grads, const std::optional<at::Tensor>& grad_k, const at::Tensor& y,
    const std::optional<at::Tensor>& bias, int64_t act, double scale, int64_t n_terms, double h,
    at::ArrayRef<double> coeffs) {
  const at::Tensor gk = grad_k.has_value() ? *grad_k : at::Tensor();
  const at::Tensor b = bias.has_value() ? *bias : at::Tensor();
  if (!needs_autograd({&gk, &y, &b}, {grads})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return rk_epilogue_backward_op(grads, grad_k, y, bias, act, scale, n_terms, h, coeffs);
  }
  auto outs = RkEpilogueBackwardOnce::apply(grads, grad_k, y, bias, act, scale, n_terms, h, coeffs);
  std::vector<at::Tensor> grad_terms(outs.begin() + 2, outs.end());
  return {outs[0], grad_terms, outs[1]};
}

std::vector<at::Tensor> basis_interp_autograd(const at::Tensor& phi, at::TensorList thetas) {
  check_phi_constant(phi);
  if (!needs_autograd({&phi}, {thetas})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return basis_interp_op(phi, thetas);
  }
  return BasisInterp::apply(phi, thetas);
}

}  // namespace

TORCH_LIBRARY_IMPL(contnet, Autograd, m) {
  m.impl("rk_combine", &rk_combine_autograd);
  m.impl("rk_combine_backward", &rk_combine_backward_autograd);
  m.impl("rk_combine_learned", &learned_autograd);
  m.impl("rk_combine_learned_backward", &learned_backward_autograd);
  m.impl("rk_epilogue", &rk_epilogue_autograd);
  // no double backward through the epilogue: a clear error if one is asked for
  m.impl("rk_epilogue_backward", &rk_epilogue_backward_autograd);
  m.impl("basis_interp", &basis_interp_autograd);
}

}  // namespace contnet
