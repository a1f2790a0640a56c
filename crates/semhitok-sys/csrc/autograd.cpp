// Setting a variable's `.grad` (PyTorch's `param.grad = g`), which tch 0.24 does not bind: the
// trainer points bf16 weights' gradients at views of a flat bf16 buffer while they compute in
// bf16, and back at the f32 flat gradient buffer afterwards.
#include <ATen/ATen.h>

#include "shim_internal.h"

extern "C" {
// `var.mutable_grad() = *grad` (grad null: undefined). Both are tch tensor handles (at::Tensor);
// the gradient's dtype, device and shape must match the variable's data. Returns null, or an
// error message to free with free().
char *shk_set_grad(void *var, void *grad) {
  return shk::guarded([&] {
    at::Tensor &v = *static_cast<at::Tensor *>(var);
    if (grad == nullptr) {
      v.mutable_grad().reset();
      return;
    }
    const at::Tensor &g = *static_cast<const at::Tensor *>(grad);
    TORCH_CHECK(g.scalar_type() == v.scalar_type() && g.device() == v.device() &&
                    g.sizes() == v.sizes(),
                "set_grad: gradient ", g.scalar_type(), " ", g.device(), " ", g.sizes(),
                " does not match the variable's data ", v.scalar_type(), " ", v.device(), " ",
                v.sizes());
    v.mutable_grad() = g;
  });
}
}
