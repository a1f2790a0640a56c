// The c10d shim: PyTorch's own process groups (ProcessGroupGloo on CPU, ProcessGroupNCCL on
// CUDA) and TCPStore rendezvous, behind a small C ABI for Rust (tch 0.24 binds none of it).
//
// Built by crates/semhitok-sys/build.rs against the headers of the project's LibTorch
// (.libtorch/torch/include), with -DUSE_C10D_GLOO (Gloo headers from Debian's libgloo-dev) and,
// when the CUDA headers are installed, -DUSE_C10D_NCCL. Only LibTorch's own constructors and
// virtual methods are called; the shim never touches a Gloo type beyond the device factory.
#include "c10d_shim.h"
#include "shim_internal.h"

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef USE_C10D_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <execinfo.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

using namespace shk;

// NCCL collectives run on the caller's (tch's) current CUDA stream (`asyncOp = false`), so
// kernels queued before and after stay ordered without extra stream synchronisation.
static bool on_current_stream(const shk_pg *pg) { return pg->kind == 1; }

// Fatal-signal reporter (see shk_install_crash_handler): writes the native stack with glibc's
// backtrace_symbols_fd (dynamic symbol names: LibTorch, NCCL and the shim's exported functions),
// then puts the previous handler back and returns, so the faulting instruction runs again under
// it (Rust's stack-overflow handler, or the default action: the core dump and exit status stay).
namespace {
struct sigaction g_previous[32];

void on_fatal_signal(int sig, siginfo_t *info, void *) {
  char head[160];
  int n = snprintf(head, sizeof head,
                   "\nsemhitok-sys: fatal signal %d (%s) at address %p; native stack:\n", sig,
                   strsignal(sig), info != nullptr ? info->si_addr : nullptr);
  if (n > 0) {
    ssize_t ignored = write(STDERR_FILENO, head, static_cast<size_t>(n));
    (void)ignored;
  }
  void *frames[128];
  int depth = backtrace(frames, 128);
  backtrace_symbols_fd(frames, depth, STDERR_FILENO);
  if (sig > 0 && sig < 32) {
    sigaction(sig, &g_previous[sig], nullptr);
  }
  if (sig == SIGABRT) {
    raise(sig);  // abort() does not re-execute anything: deliver it again to the old action
  }
}
}  // namespace

extern "C" {

int shk_install_crash_handler(void) {
  static bool installed = false;
  if (installed) return 0;
  installed = true;
  // Load libgcc's unwinder now: backtrace() would otherwise dlopen it inside the handler.
  void *warm[1];
  backtrace(warm, 1);
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_fatal_signal;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  int rc = 0;
  for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT}) {
    rc |= sigaction(sig, &sa, &g_previous[sig]);
  }
  return rc;
}

void shk_crash_for_test(void) {
  volatile int *p = nullptr;
  *p = 1;  // NOLINT: deliberate, the crash handler's test
}

int shk_has_backend(int backend) {
  if (backend == 0) return 1;
#ifdef USE_C10D_NCCL
  if (backend == 1) return 1;
#endif
  return 0;
}

char *shk_pg_new(int backend, const char *master_addr, int master_port, int rank, int world_size,
                 int64_t rendezvous_ms, int64_t timeout_ms, int device_index, int is_server,
                 const char *prefix, shk_pg **out) {
  return guarded([&] {
    *out = nullptr;
    if (!shk_has_backend(backend)) {
      throw std::runtime_error(backend == 1 ? "this build has no NCCL backend (built without the CUDA headers)"
                                            : "unknown backend");
    }
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(master_port);
    so.isServer = is_server != 0;
    so.numWorkers = static_cast<size_t>(world_size);
    so.waitWorkers = true;  // clients count themselves in, the server waits for all
    so.timeout = ms(rendezvous_ms);
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(master_addr), so);
    c10::intrusive_ptr<c10d::Store> store =
        c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), tcp);
    auto pg = new shk_pg();
    pg->store = store;
    pg->kind = backend;
    pg->world_size = world_size;
    pg->device_index = device_index;
    try {
      if (backend == 0) {
        auto o = c10d::ProcessGroupGloo::Options::create();
        o->timeout = ms(rendezvous_ms);  // connecting the pairs; collectives pass their own
        const char *ifname = std::getenv("GLOO_SOCKET_IFNAME");
        if (ifname != nullptr && *ifname != '\0') {
          o->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
        } else {
          o->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
        }
        o->threads = 2;
        pg->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world_size, o);
      }
#ifdef USE_C10D_NCCL
      if (backend == 1) {
        c10::cuda::set_device(static_cast<c10::DeviceIndex>(device_index));
        auto o = c10d::ProcessGroupNCCL::Options::create();
        o->timeout = ms(timeout_ms);
        pg->backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world_size, o);
      }
#endif
    } catch (...) {
      delete pg;
      throw;
    }
    *out = pg;
  });
}

void shk_pg_free(shk_pg *pg) {
  if (pg == nullptr) return;
  try {
#ifdef USE_C10D_NCCL
    if (pg->kind == 1 && pg->backend) {
      pg->backend->shutdown();
    }
#endif
    pg->backend.reset();
    pg->store.reset();
  } catch (...) {
  }
  delete pg;
}

char *shk_all_reduce(shk_pg *pg, void *tensor, int op, int64_t timeout_ms) {
  return guarded([&] {
    at::Tensor &t = *static_cast<at::Tensor *>(tensor);
    std::vector<at::Tensor> v{t};
    c10d::AllreduceOptions o;
    o.timeout = ms(timeout_ms);
    o.asyncOp = !on_current_stream(pg);
    // Gloo has no AVG: sum, then divide (NCCL averages natively).
    bool avg = op == 1;
    o.reduceOp = (avg && pg->kind == 1) ? c10d::ReduceOp(c10d::ReduceOp::AVG)
                                         : c10d::ReduceOp(c10d::ReduceOp::SUM);
    wait(pg->backend->allreduce(v, o), timeout_ms);
    if (avg && pg->kind != 1) {
      t.div_(static_cast<double>(pg->world_size));
    }
  });
}

char *shk_broadcast(shk_pg *pg, void *tensor, int root, int64_t timeout_ms) {
  return guarded([&] {
    at::Tensor &t = *static_cast<at::Tensor *>(tensor);
    std::vector<at::Tensor> v{t};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    o.rootTensor = 0;
    o.timeout = ms(timeout_ms);
    o.asyncOp = !on_current_stream(pg);
    wait(pg->backend->broadcast(v, o), timeout_ms);
  });
}

char *shk_all_gather(shk_pg *pg, void *output, void *input, int64_t timeout_ms) {
  return guarded([&] {
    at::Tensor &out = *static_cast<at::Tensor *>(output);
    at::Tensor &in = *static_cast<at::Tensor *>(input);
    TORCH_CHECK(out.is_contiguous() && in.is_contiguous(), "all_gather: tensors must be contiguous");
    TORCH_CHECK(out.dim() >= 1 && out.size(0) == in.size(0) * pg->world_size,
                "all_gather: output dim 0 is ", out.size(0), ", expected world_size x ", in.size(0));
    std::vector<std::vector<at::Tensor>> outs(1);
    outs[0] = out.chunk(pg->world_size, 0);
    std::vector<at::Tensor> ins{in};
    c10d::AllgatherOptions o;
    o.timeout = ms(timeout_ms);
    o.asyncOp = !on_current_stream(pg);
    wait(pg->backend->allgather(outs, ins, o), timeout_ms);
  });
}

char *shk_barrier(shk_pg *pg, int64_t timeout_ms) {
  return guarded([&] {
    c10d::BarrierOptions o;
    o.timeout = ms(timeout_ms);
    if (pg->kind == 1) {
      o.device_ids = {static_cast<int64_t>(pg->device_index)};
    }
    wait(pg->backend->barrier(o), timeout_ms);
  });
}

void shk_free_string(char *s) { std::free(s); }

}  // extern "C"
