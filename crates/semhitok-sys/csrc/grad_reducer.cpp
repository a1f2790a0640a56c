// Bucketed gradient all-reduce that overlaps the backward pass (what DDP's Reducer does, reduced
// to the trainer's flat gradient buffer).
//
// The trainer's parameters keep their gradients as views of ONE flat buffer (the optimizer's),
// and autograd's AccumulateGrad adds each backward's gradient in place into that view. The
// buffer is cut into buckets, contiguous ranges at parameter boundaries. Every parameter gets a
// post-accumulate-grad hook (`torch::autograd::impl::set_post_acc_grad_hooks`, the C++ side of
// `Tensor.register_post_accumulate_grad_hook`): it lives in the variable's autograd metadata, so
// it survives the grad accumulator being re-created (the bf16 working copy's `set_data` does
// that). While the reducer is armed, the hook counts the bucket's parameters down; a complete
// bucket is all-reduced asynchronously (c10d Work, NCCL on its own stream after the current one)
// while the backward pass goes on. Buckets are launched in one fixed order on every rank (c10d
// matches collectives by issue order): a complete bucket waits for those before it in the order.
// `shk_reducer_finish`, after the backward, launches what is left (parameters that got no
// gradient), waits for every Work (NCCL: the caller's stream waits, the host does not) and, on
// Gloo, divides by the world size for the average (NCCL averages natively), element for element
// as the single flat all-reduce does.
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <memory>
#include <mutex>
#include <stdexcept>
#include <vector>

#include "c10d_shim.h"
#include "shim_internal.h"

using namespace shk;

namespace {

struct ReducerState {
  std::mutex mu;
  shk_pg *pg = nullptr;
  at::Tensor flat;
  std::vector<at::Tensor> params;
  std::vector<int64_t> offset, numel, bucket_of;
  std::vector<int64_t> start, len, n_params;
  std::vector<int64_t> order;  // launch order: a permutation of the buckets
  bool avg = true;
  int64_t timeout_ms = 600000;
  // Per backward:
  bool armed = false;
  std::vector<int64_t> pending;  // parameters of each bucket still to come
  std::vector<char> seen;        // per parameter
  std::vector<char> complete;    // per bucket
  size_t next = 0;               // index into `order` of the next bucket to launch
  std::vector<c10::intrusive_ptr<c10d::Work>> works;
  std::vector<int64_t> completion;  // buckets in the order they became complete
  std::string error;

  void reset() {
    armed = false;
    pending = n_params;
    seen.assign(params.size(), 0);
    complete.assign(start.size(), 0);
    next = 0;
    completion.clear();
    error.clear();
  }

  void launch(int64_t b) {
    at::Tensor view = flat.narrow(0, start[b], len[b]);
    std::vector<at::Tensor> v{view};
    c10d::AllreduceOptions o;
    o.timeout = ms(timeout_ms);
    o.asyncOp = true;
    o.reduceOp = (avg && pg->kind == 1) ? c10d::ReduceOp(c10d::ReduceOp::AVG)
                                         : c10d::ReduceOp(c10d::ReduceOp::SUM);
    works.push_back(pg->backend->allreduce(v, o));
  }

  // Launch, in `order`, every bucket from `next` on that is complete.
  void launch_ready() {
    while (next < order.size() && complete[order[next]]) {
      launch(order[next]);
      ++next;
    }
  }

  // Called by parameter i's hook (autograd's thread) once its gradient is accumulated.
  void on_ready(int64_t i, const at::Tensor &var) {
    std::lock_guard<std::mutex> lock(mu);
    if (!armed || !error.empty()) return;
    try {
      const at::Tensor &g = var.grad();
      const char *want = static_cast<const char *>(flat.data_ptr()) + offset[i] * flat.element_size();
      if (!g.defined() || static_cast<const char *>(g.data_ptr()) != want) {
        error = "the gradient of parameter " + std::to_string(i) +
                " is not its view of the flat gradient buffer (re-allocated during backward?)";
        return;
      }
      if (seen[i]) {
        error = "the gradient of parameter " + std::to_string(i) +
                " was accumulated twice in one armed backward (the overlapped all-reduce needs "
                "one backward per step: set dist.overlap = false)";
        return;
      }
      seen[i] = 1;
      int64_t b = bucket_of[i];
      if (--pending[b] == 0) {
        complete[b] = 1;
        completion.push_back(b);
        launch_ready();
      }
    } catch (const c10::Error &e) {
      error = e.what_without_backtrace();
    } catch (const std::exception &e) {
      error = e.what();
    }
  }
};

struct ReadyHook final : torch::autograd::PostAccumulateGradHook {
  std::weak_ptr<ReducerState> state;
  int64_t index;
  ReadyHook(std::weak_ptr<ReducerState> s, int64_t i) : state(std::move(s)), index(i) {}
  void operator()(const torch::autograd::Variable &var) override {
    if (auto s = state.lock()) s->on_ready(index, var);
  }
};

}  // namespace

struct shk_reducer {
  std::shared_ptr<ReducerState> state;
};

extern "C" {

char *shk_reducer_new(shk_pg *pg, void *flat, void *const *params, const int64_t *offsets,
                      int64_t n_params, const int64_t *bucket_starts, int64_t n_buckets, int avg,
                      int64_t timeout_ms, shk_reducer **out) {
  return guarded([&] {
    *out = nullptr;
    auto s = std::make_shared<ReducerState>();
    s->pg = pg;
    s->flat = *static_cast<at::Tensor *>(flat);
    s->avg = avg != 0;
    s->timeout_ms = timeout_ms;
    TORCH_CHECK(s->flat.dim() == 1 && s->flat.is_contiguous(),
                "reducer: the flat gradient buffer must be 1-d and contiguous");
    const int64_t total = s->flat.numel();
    TORCH_CHECK(n_buckets >= 1 && bucket_starts[0] == 0, "reducer: buckets must start at 0");
    for (int64_t b = 0; b < n_buckets; ++b) {
      int64_t end = b + 1 < n_buckets ? bucket_starts[b + 1] : total;
      TORCH_CHECK(end > bucket_starts[b], "reducer: bucket ", b, " is empty or out of order");
      s->start.push_back(bucket_starts[b]);
      s->len.push_back(end - bucket_starts[b]);
      s->order.push_back(b);
    }
    s->n_params.assign(n_buckets, 0);
    for (int64_t i = 0; i < n_params; ++i) {
      const at::Tensor &p = *static_cast<const at::Tensor *>(params[i]);
      int64_t off = offsets[i], n = p.numel();
      TORCH_CHECK(off >= 0 && off + n <= total, "reducer: parameter ", i, " lies outside the buffer");
      // The bucket holding [off, off + n): the last start <= off; it must hold all of it.
      int64_t b = 0;
      while (b + 1 < n_buckets && s->start[b + 1] <= off) ++b;
      TORCH_CHECK(n == 0 || off + n <= s->start[b] + s->len[b], "reducer: parameter ", i,
                  " straddles buckets ", b, " and ", b + 1);
      s->params.push_back(p);
      s->offset.push_back(off);
      s->numel.push_back(n);
      s->bucket_of.push_back(b);
      s->n_params[b] += 1;
    }
    s->reset();
    for (int64_t i = 0; i < n_params; ++i) {
      torch::autograd::impl::set_post_acc_grad_hooks(
          s->params[i], std::make_unique<ReadyHook>(std::weak_ptr<ReducerState>(s), i));
    }
    *out = new shk_reducer{s};
  });
}

void shk_reducer_free(shk_reducer *r) {
  if (r == nullptr) return;
  try {
    auto &s = r->state;
    for (auto &p : s->params) {
      auto &h = torch::autograd::impl::post_acc_grad_hooks(p);
      auto *mine = dynamic_cast<ReadyHook *>(h.get());
      if (mine != nullptr && mine->state.lock() == s) h.reset();
    }
  } catch (...) {
  }
  delete r;
}

char *shk_reducer_set_order(shk_reducer *r, const int64_t *order, int64_t n) {
  return guarded([&] {
    auto &s = *r->state;
    std::lock_guard<std::mutex> lock(s.mu);
    TORCH_CHECK(n == static_cast<int64_t>(s.start.size()), "reducer: order of ", n,
                " buckets for ", s.start.size());
    std::vector<char> hit(n, 0);
    for (int64_t k = 0; k < n; ++k) {
      TORCH_CHECK(order[k] >= 0 && order[k] < n && !hit[order[k]],
                  "reducer: the order is not a permutation of the buckets");
      hit[order[k]] = 1;
    }
    s.order.assign(order, order + n);
  });
}

void shk_reducer_arm(shk_reducer *r) {
  auto &s = *r->state;
  std::lock_guard<std::mutex> lock(s.mu);
  s.reset();
  s.armed = true;
}

char *shk_reducer_finish(shk_reducer *r, int64_t *completion_out, int64_t *n_complete) {
  return guarded([&] {
    auto &s = *r->state;
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    std::string err;
    {
      std::lock_guard<std::mutex> lock(s.mu);
      err = s.error;
      // The rest, in order (parameters without a gradient this backward, or not armed).
      while (s.next < s.order.size()) {
        s.launch(s.order[s.next]);
        ++s.next;
      }
      *n_complete = static_cast<int64_t>(s.completion.size());
      for (size_t k = 0; k < s.completion.size(); ++k) completion_out[k] = s.completion[k];
      works.swap(s.works);
      s.reset();
    }
    for (auto &w : works) wait(w, s.timeout_ms);
    if (s.avg && s.pg->kind != 1) s.flat.div_(static_cast<double>(s.pg->world_size));
    if (!err.empty()) throw std::runtime_error(err);
  });
}

}  // extern "C"
