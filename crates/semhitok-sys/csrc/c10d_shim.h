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

// Bucketed gradient all-reduce overlapping the backward pass (grad_reducer.cpp).
typedef struct shk_reducer shk_reducer;
// `flat`: the 1-d gradient buffer; `params[i]` (at::Tensor*) has its gradient at
// [offsets[i], offsets[i] + numel); buckets are [bucket_starts[b], bucket_starts[b + 1]) (the
// last one to the end), each holding whole parameters. Installs a post-accumulate-grad hook on
// every parameter (removed by shk_reducer_free). `avg`: average (else sum).
char *shk_reducer_new(shk_pg *pg, void *flat, void *const *params, const int64_t *offsets,
                      int64_t n_params, const int64_t *bucket_starts, int64_t n_buckets, int avg,
                      int64_t timeout_ms, shk_reducer **out);
void shk_reducer_free(shk_reducer *r);
// The order buckets are launched in (a permutation; the same on every rank). Default 0, 1, ...
char *shk_reducer_set_order(shk_reducer *r, const int64_t *order, int64_t n);
// The next backward launches each bucket as soon as its gradients are accumulated.
void shk_reducer_arm(shk_reducer *r);
// After the backward: launch the buckets not launched yet, wait for all, average. Writes the
// buckets in the order they became complete during the armed backward (n_buckets slots) and
// their count. Disarms.
char *shk_reducer_finish(shk_reducer *r, int64_t *completion_out, int64_t *n_complete);

void shk_free_string(char *s);

#ifdef __cplusplus
}
#endif
