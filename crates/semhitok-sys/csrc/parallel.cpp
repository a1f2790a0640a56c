// LibTorch's intra-op thread pool for Rust work: at::parallel_for over [begin, end) with the
// given grain, each chunk handed to a C callback. The chunks run on the same OpenMP threads as
// LibTorch's own kernels, so Rust loops between them do not compete with those threads for the
// cores (a second pool does: its threads and OpenMP's spinning workers oversubscribe the cores).
#include <ATen/Parallel.h>

#include "shim_internal.h"

extern "C" {
// Returns null, or an error message to free with free().
char *shk_parallel_for(int64_t begin, int64_t end, int64_t grain,
                       void (*f)(void *ctx, int64_t b, int64_t e), void *ctx) {
  return shk::guarded([&] { at::parallel_for(begin, end, grain, [&](int64_t b, int64_t e) { f(ctx, b, e); }); });
}
}
