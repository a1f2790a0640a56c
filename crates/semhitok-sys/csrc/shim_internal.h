// What the shim's source files share: the process-group handle and the error / wait helpers.
#pragma once
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>

struct shk_pg {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  int kind;  // 0 gloo, 1 nccl
  int world_size;
  int device_index;
};

namespace shk {

inline char *dup(const std::string &s) {
  char *p = static_cast<char *>(std::malloc(s.size() + 1));
  if (p != nullptr) {
    std::memcpy(p, s.c_str(), s.size() + 1);
  }
  return p;
}

// Runs f, turning any C++ exception into a message (NULL: success).
template <typename F>
char *guarded(F &&f) {
  try {
    f();
    return nullptr;
  } catch (const c10::Error &e) {
    return dup(e.what_without_backtrace());
  } catch (const std::exception &e) {
    return dup(e.what());
  } catch (...) {
    return dup("unknown C++ exception");
  }
}

inline std::chrono::milliseconds ms(int64_t v) { return std::chrono::milliseconds(v); }

inline void wait(const c10::intrusive_ptr<c10d::Work> &work, int64_t timeout_ms) {
  // A synchronous NCCL collective (`asyncOp = false`: queued on the caller's current stream)
  // returns no Work object in PyTorch 2.11: there is nothing to wait for, stream order does it.
  // (Calling wait() on that null handle was the H200 world-size-1 SIGSEGV.)
  if (!work) return;
  // Throws on failure and on timeout (c10d's own message, e.g. "Operation timed out!"). For an
  // asynchronous NCCL collective it makes the caller's current stream wait for it.
  work->wait(ms(timeout_ms));
}

}  // namespace shk
