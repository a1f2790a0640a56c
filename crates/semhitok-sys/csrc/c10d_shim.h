// C ABI of the c10d shim (see c10d_shim.cpp). Tensors cross the boundary as `at::Tensor*`
// (tch's `Tensor::as_mut_ptr()`, torch-sys's `typedef torch::Tensor *tensor`). Every function
// that can fail returns NULL on success or a malloc'd message the caller frees with
// `shk_free_string`.
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct shk_pg shk_pg;

// Prints the native stack (glibc backtrace_symbols_fd) to stderr on SIGSEGV, SIGBUS, SIGFPE,
// SIGILL and SIGABRT, then hands the signal to the previously installed handler. Idempotent.
// Returns 0 on success.
int shk_install_crash_handler(void);
// Dereferences NULL (the crash handler's test; never call it otherwise).
void shk_crash_for_test(void);

// 0 = gloo, 1 = nccl.
int shk_has_backend(int backend);

// Rendezvous through a TCPStore at master_addr:master_port (rank 0 serves it), then a process
// group of `backend`. `rendezvous_ms` bounds the store and Gloo's connection set-up, `timeout_ms`
// is NCCL's watchdog limit (each collective passes its own limit too). `device_index`: the CUDA
// device of this rank (NCCL), ignored by Gloo.
// `is_server`: this process serves the store (rank 0, unless torchrun's agent already does);
// `prefix` namespaces the group's keys in the store.
char *shk_pg_new(int backend, const char *master_addr, int master_port, int rank, int world_size,
                 int64_t rendezvous_ms, int64_t timeout_ms, int device_index, int is_server,
                 const char *prefix, shk_pg **out);
void shk_pg_free(shk_pg *pg);

// op: 0 = sum, 1 = average. In place.
char *shk_all_reduce(shk_pg *pg, void *tensor, int op, int64_t timeout_ms);
// In place; `root` sends.
char *shk_broadcast(shk_pg *pg, void *tensor, int root, int64_t timeout_ms);
// `output` is `[world_size * n, ...]` contiguous; rank r's `input` `[n, ...]` lands in chunk r.
char *shk_all_gather(shk_pg *pg, void *output, void *input, int64_t timeout_ms);
char *shk_barrier(shk_pg *pg, int64_t timeout_ms);

void shk_free_string(char *s);

#ifdef __cplusplus
}
#endif
