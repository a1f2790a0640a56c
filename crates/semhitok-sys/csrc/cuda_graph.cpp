// CUDA graphs for tch (tch 0.24 binds neither graphs nor streams): at::cuda::CUDAGraph behind a
// small C ABI. During capture a side stream from LibTorch's pool is the current stream (held by a
// c10::cuda::CUDAStreamGuard), so every tch op issued from Rust in between goes to the capturing
// stream; the graph allocates from its own private memory pool, whose blocks stay alive (and at
// fixed addresses) until the graph is freed. Replay runs on the caller's current stream.
// The stream switch uses c10::cuda::setCurrentCUDAStream (what CUDAStreamGuard does) rather than
// the guard classes, whose inline virtual methods would make this file call the CUDA runtime
// directly (and so link libcudart); everything here resolves in libc10_cuda / libtorch_cuda.
//
// Built with the c10d shim (build.rs); without the CUDA headers (USE_CUDA undefined) every entry
// point reports that graphs are unavailable.
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>

#ifdef USE_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace {
char *graph_dup(const std::string &s) {
  char *p = static_cast<char *>(std::malloc(s.size() + 1));
  if (p != nullptr) {
    std::memcpy(p, s.c_str(), s.size() + 1);
  }
  return p;
}
template <typename F>
char *graph_guarded(F &&f) {
  try {
    f();
    return nullptr;
  } catch (const c10::Error &e) {
    return graph_dup(e.what_without_backtrace());
  } catch (const std::exception &e) {
    return graph_dup(e.what());
  } catch (...) {
    return graph_dup("unknown C++ exception");
  }
}
}  // namespace

#ifdef USE_CUDA
struct shk_graph {
  at::cuda::CUDAGraph graph;
  // The stream that was current before the capture (restored at its end).
  std::optional<c10::cuda::CUDAStream> previous;
  c10::DeviceIndex device;
  bool captured = false;
};
#else
struct shk_graph {
  int unused;
};
#endif

extern "C" {

int shk_graph_available() {
#ifdef USE_CUDA
  return 1;
#else
  return 0;
#endif
}

char *shk_graph_new(int device, shk_graph **out) {
  *out = nullptr;
#ifdef USE_CUDA
  return graph_guarded([&] {
    auto *g = new shk_graph();
    g->device = static_cast<c10::DeviceIndex>(device);
    *out = g;
  });
#else
  (void)device;
  return graph_dup("CUDA graphs: semhitok-sys was built without the CUDA headers (cargo xtask setup)");
#endif
}

// Makes a pool stream current (waiting for the work already queued on the current stream) and
// starts capturing on it.
char *shk_graph_capture_begin(shk_graph *g) {
#ifdef USE_CUDA
  return graph_guarded([&] {
    auto cur = c10::cuda::getCurrentCUDAStream(g->device);
    auto side = c10::cuda::getStreamFromPool(false, g->device);
    // Everything queued so far is done before the capture starts (torch.cuda.graph does the
    // same), so the side stream needs no event to order after it.
    c10::cuda::device_synchronize();
    g->previous = cur;
    c10::cuda::setCurrentCUDAStream(side);
    try {
      // Thread-local capture mode: only this thread's unsafe calls (synchronizing copies, ...)
      // are refused while it captures; other threads of the process keep working on their own
      // streams (the global mode refuses theirs too and invalidates this capture when one is
      // made).
      g->graph.capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal);
    } catch (...) {
      c10::cuda::setCurrentCUDAStream(*g->previous);
      g->previous.reset();
      throw;
    }
  });
#else
  (void)g;
  return graph_dup("CUDA graphs unavailable");
#endif
}

// Ends the capture, instantiates the graph and restores the previous current stream. Nothing
// ran on the side stream during capture, so the previous stream needs no event to wait on.
char *shk_graph_capture_end(shk_graph *g) {
#ifdef USE_CUDA
  return graph_guarded([&] {
    struct Restore {
      shk_graph *g;
      ~Restore() {
        if (g->previous) {
          c10::cuda::setCurrentCUDAStream(*g->previous);
          g->previous.reset();
        }
      }
    } restore{g};
    g->graph.capture_end();
    g->captured = true;
  });
#else
  (void)g;
  return graph_dup("CUDA graphs unavailable");
#endif
}

char *shk_graph_replay(shk_graph *g) {
#ifdef USE_CUDA
  return graph_guarded([&] {
    if (!g->captured) {
      throw std::runtime_error("CUDA graph replayed before a successful capture");
    }
    g->graph.replay();
  });
#else
  (void)g;
  return graph_dup("CUDA graphs unavailable");
#endif
}

void shk_graph_free(shk_graph *g) { delete g; }

// LibTorch's current CUDA stream of `device` (a cudaStream_t; the legacy default stream is
// null), for kernels launched through the driver API that must run where LibTorch's next op
// runs: on a graph's capture stream while capturing. Null without CUDA.
void *shk_current_stream(int device) {
#ifdef USE_CUDA
  try {
    return static_cast<void *>(c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device)).stream());
  } catch (...) {
    return nullptr;
  }
#else
  (void)device;
  return nullptr;
#endif
}

}  // extern "C"
