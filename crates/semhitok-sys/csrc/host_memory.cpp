// Pinned (page-locked) host copies of tensors for non-blocking uploads: Tensor::pin_memory()
// without a device argument. tch 0.24 binds only the overload that takes a device, which
// PyTorch 2.11 deprecates with a warning printed at every call (once per training batch).
#include <ATen/ATen.h>

#include "shim_internal.h"

extern "C" {
// `*out = src.pin_memory()`: `out` is a tch tensor handle (an at::Tensor) whose tensor is
// replaced; `src` is only read. Returns null, or an error message to free with free().
char *shk_pin_memory(void *src, void *out) {
  return shk::guarded([&] {
    const at::Tensor &s = *static_cast<const at::Tensor *>(src);
    *static_cast<at::Tensor *>(out) = s.pin_memory();
  });
}
}
