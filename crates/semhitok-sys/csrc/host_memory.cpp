// Pinned (page-locked) host copies of tensors for non-blocking uploads: Tensor::pin_memory()
// without a device argument. tch 0.24 binds only the overload that takes a device, which
// PyTorch 2.11 deprecates with a warning printed at every call (once per training batch).
#include <ATen/ATen.h>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {
char *host_dup(const std::string &s) {
  char *p = static_cast<char *>(std::malloc(s.size() + 1));
  if (p != nullptr) {
    std::memcpy(p, s.c_str(), s.size() + 1);
  }
  return p;
}
}  // namespace

extern "C" {
// `*out = src.pin_memory()`: `out` is a tch tensor handle (an at::Tensor) whose tensor is
// replaced; `src` is only read. Returns null, or an error message to free with free().
char *shk_pin_memory(void *src, void *out) {
  try {
    const at::Tensor &s = *static_cast<const at::Tensor *>(src);
    at::Tensor &o = *static_cast<at::Tensor *>(out);
    o = s.pin_memory();
    return nullptr;
  } catch (const c10::Error &e) {
    return host_dup(e.what_without_backtrace());
  } catch (const std::exception &e) {
    return host_dup(e.what());
  } catch (...) {
    return host_dup("unknown C++ exception");
  }
}
}
