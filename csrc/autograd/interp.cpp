// Autograd of the time-interpolated weight lookup, in C++: its backward is the same lookup
// with phi transposed, scattering the stage gradients into the basis nodes.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "contnet/dispatch.h"
#include "contnet/checks.h"

namespace contnet {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

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
  m.impl("basis_interp", &basis_interp_autograd);
}

}  // namespace contnet
