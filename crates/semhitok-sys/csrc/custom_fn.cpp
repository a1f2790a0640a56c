// A custom autograd node whose forward and backward are Rust callbacks (tch 0.24 has no custom
// autograd Function): what a fused kernel with its own backward needs to take part in LibTorch's
// autograd. The node is torch::autograd::Function<RustFunction> (the C++ API's custom
// Function); its forward runs the Rust forward under no-grad and saves what it returns for
// backward, its backward calls the Rust backward with the saved tensors and the output
// gradients. Tensors cross as heap `at::Tensor` objects (tch's own handle type): those handed to
// Rust are `new`ed here and owned by Rust from then on; those Rust hands back were `new`ed by tch
// and are taken over (moved out and deleted) here.
#include <torch/csrc/autograd/custom_function.h>

#include <cstdint>
#include <string>
#include <vector>

#include "shim_internal.h"

extern "C" {
// Both return null, or an error message (malloc'd, freed here with free()).
// forward: op, inputs[n_in] (owned by the callee), outputs[n_out] and saved[n_saved] to fill
// with tensors the callee gives up.
typedef char *(*shk_fn_forward)(int64_t op, void **inputs, int64_t n_in, void **outputs,
                                int64_t n_out, void **saved, int64_t n_saved);
// backward: op, saved[n_saved] and grads[n_grads] (owned by the callee), grad_inputs[n_in] to
// fill (null: no gradient).
typedef char *(*shk_fn_backward)(int64_t op, void **saved, int64_t n_saved, void **grads,
                                 int64_t n_grads, void **grad_inputs, int64_t n_in);
}

namespace {

void take_error(char *err) {
  if (err != nullptr) {
    std::string m(err);
    std::free(err);
    TORCH_CHECK(false, m);
  }
}

at::Tensor take_tensor(void *p) {
  if (p == nullptr) return at::Tensor();
  auto *t = static_cast<at::Tensor *>(p);
  at::Tensor v = std::move(*t);
  delete t;
  return v;
}

// The non-tensor arguments of forward (each takes one slot among backward's outputs).
constexpr int kScalarArgs = 5;

struct RustFunction : public torch::autograd::Function<RustFunction> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext *ctx,
                                                at::TensorList inputs, int64_t op, int64_t fwd,
                                                int64_t bwd, int64_t n_out, int64_t n_saved) {
    std::vector<void *> in(inputs.size()), out(n_out, nullptr), saved(n_saved, nullptr);
    for (size_t i = 0; i < inputs.size(); ++i) in[i] = new at::Tensor(inputs[i]);
    char *err = reinterpret_cast<shk_fn_forward>(fwd)(op, in.data(), (int64_t)in.size(),
                                                      out.data(), n_out, saved.data(), n_saved);
    torch::autograd::variable_list outs, keep;
    for (auto *p : out) outs.push_back(take_tensor(p));
    for (auto *p : saved) keep.push_back(take_tensor(p));
    take_error(err);
    for (auto &o : outs) TORCH_CHECK(o.defined(), "custom function ", op, ": an output is missing");
    ctx->save_for_backward(keep);
    ctx->saved_data["op"] = op;
    ctx->saved_data["bwd"] = bwd;
    ctx->saved_data["n_in"] = (int64_t)inputs.size();
    return outs;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const int64_t op = ctx->saved_data["op"].toInt();
    const int64_t n_in = ctx->saved_data["n_in"].toInt();
    auto bwd = reinterpret_cast<shk_fn_backward>(ctx->saved_data["bwd"].toInt());
    std::vector<void *> s(saved.size()), g(grads.size()), gin(n_in, nullptr);
    for (size_t i = 0; i < saved.size(); ++i) s[i] = new at::Tensor(saved[i]);
    for (size_t i = 0; i < grads.size(); ++i) g[i] = new at::Tensor(grads[i]);
    char *err = bwd(op, s.data(), (int64_t)s.size(), g.data(), (int64_t)g.size(), gin.data(), n_in);
    torch::autograd::variable_list out;
    for (auto *p : gin) out.push_back(take_tensor(p));
    take_error(err);
    for (int i = 0; i < kScalarArgs; ++i) out.emplace_back();
    return out;
  }
};

}  // namespace

extern "C" {
// outputs[n_out] (tch handles, replaced) = RustFunction::apply(inputs[n_in], ...).
char *shk_custom_apply(int64_t op, void *fwd, void *bwd, void **inputs, int64_t n_in,
                       void **outputs, int64_t n_out, int64_t n_saved) {
  return shk::guarded([&] {
    std::vector<at::Tensor> ins;
    ins.reserve(n_in);
    for (int64_t i = 0; i < n_in; ++i) ins.push_back(*static_cast<at::Tensor *>(inputs[i]));
    auto outs = RustFunction::apply(at::TensorList(ins), op, (int64_t)(intptr_t)fwd,
                                    (int64_t)(intptr_t)bwd, n_out, n_saved);
    TORCH_CHECK((int64_t)outs.size() == n_out, "custom function ", op, ": ", outs.size(),
                " outputs, expected ", n_out);
    for (int64_t i = 0; i < n_out; ++i) *static_cast<at::Tensor *>(outputs[i]) = outs[i];
  });
}
}
