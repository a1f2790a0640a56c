//! [`ProcessGroup`]: one c10d process group (Gloo or NCCL) and its collectives.

use crate::env::{Backend, DistEnv};
use crate::error::{Error, Result};
use crate::ffi;
use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tch::Tensor;

/// Default collective timeout (torch.distributed's default for Gloo and NCCL: 10 minutes).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Reduction of [`ProcessGroup::all_reduce`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    /// Sum divided by the world size (NCCL's native AVG; sum then divide on Gloo).
    Avg,
}

/// A c10d process group over all ranks of the job.
///
/// Every collective blocks until it completed on this rank (the tensor then holds the result)
/// or its timeout expired; a failure is [`Error::Collective`] with the step last given to
/// [`ProcessGroup::set_step`]. Collectives must be issued in the same order on every rank.
#[derive(Debug)]
pub struct ProcessGroup {
    raw: *mut ffi::ShkPg,
    backend: Backend,
    rank: usize,
    world_size: usize,
    local_rank: usize,
    timeout: Duration,
    step: AtomicU64,
}

// SAFETY: c10d process groups are thread-safe objects (torch.distributed calls them from any
// thread); the handle is only freed in `Drop`.
unsafe impl Send for ProcessGroup {}
// SAFETY: as above; all methods take `&self` and c10d serialises work internally.
unsafe impl Sync for ProcessGroup {}

pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

impl ProcessGroup {
    /// The group of the launcher's environment ([`DistEnv::from_env`]); `Ok(None)` for a plain,
    /// non-distributed run. `timeout` bounds the rendezvous and each collective.
    pub fn init_from_env(backend: Backend, timeout: Duration) -> Result<Option<Self>> {
        match DistEnv::from_env()? {
            Some(env) => Self::new(&env, backend, timeout).map(Some),
            None => Ok(None),
        }
    }

    /// Rendezvous through the TCPStore of `env` (served by rank 0 unless torchrun's agent serves
    /// it) and build the `backend` process group; `timeout` bounds the rendezvous and each
    /// collective.
    pub fn new(env: &DistEnv, backend: Backend, timeout: Duration) -> Result<Self> {
        Self::with_timeouts(env, backend, timeout, timeout)
    }

    /// [`ProcessGroup::new`] with a separate limit for the rendezvous (all ranks starting up and
    /// connecting), which may need longer than a collective of a running job.
    pub fn with_timeouts(
        env: &DistEnv,
        backend: Backend,
        rendezvous: Duration,
        timeout: Duration,
    ) -> Result<Self> {
        let init_err = |msg: String| Error::Init {
            backend: backend.as_str(),
            rank: env.rank,
            world_size: env.world_size,
            addr: env.master_addr.clone(),
            port: env.master_port,
            msg,
        };
        crate::install_crash_handler();
        flight_recorder_off_by_default();
        if !backend.compiled() {
            return Err(Error::Unsupported(format!(
                "the {backend} backend is not compiled into this build (NCCL needs the CUDA headers \
                 of `cargo xtask setup` when building)"
            )));
        }
        let addr = CString::new(env.master_addr.as_str())
            .map_err(|_| init_err("MASTER_ADDR contains a NUL byte".into()))?;
        let prefix = CString::new(format!("semhitok/attempt_{}", env.restart_count))
            .map_err(|_| init_err("bad store prefix".into()))?;
        let is_server = env.rank == 0 && !env.agent_store;
        let code: c_int = match backend {
            Backend::Gloo => 0,
            Backend::Nccl => 1,
        };
        let mut raw: *mut ffi::ShkPg = std::ptr::null_mut();
        // SAFETY: valid C strings for the call's duration; `raw` is written on success only.
        let err = unsafe {
            ffi::shk_pg_new(
                code,
                addr.as_ptr(),
                c_int::from(env.master_port),
                env.rank as c_int,
                env.world_size as c_int,
                millis(rendezvous),
                millis(timeout),
                env.local_rank as c_int,
                c_int::from(is_server),
                prefix.as_ptr(),
                &mut raw,
            )
        };
        if let Some(msg) = ffi::take_error(err) {
            return Err(init_err(msg));
        }
        if raw.is_null() {
            return Err(init_err("the shim returned no process group".into()));
        }
        Ok(Self {
            raw,
            backend,
            rank: env.rank,
            world_size: env.world_size,
            local_rank: env.local_rank,
            timeout,
            step: AtomicU64::new(0),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }
    pub fn rank(&self) -> usize {
        self.rank
    }
    pub fn world_size(&self) -> usize {
        self.world_size
    }
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }
    /// The default timeout of each collective.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
    /// Whether this is rank 0 (the rank that writes checkpoints).
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }
    /// The raw handle (for the shim's other objects, e.g. the gradient reducer).
    pub(crate) fn raw(&self) -> *mut ffi::ShkPg {
        self.raw
    }
    /// The training step named by errors of later collectives.
    pub fn set_step(&self, step: u64) {
        self.step.store(step, Ordering::Relaxed);
    }

    pub(crate) fn check(
        &self,
        op: &'static str,
        what: &str,
        timeout: Duration,
        err: *mut c_char,
    ) -> Result<()> {
        match ffi::take_error(err) {
            None => Ok(()),
            Some(msg) => Err(Error::Collective {
                op,
                what: what.to_string(),
                rank: self.rank,
                world_size: self.world_size,
                step: self.step.load(Ordering::Relaxed),
                timeout,
                msg,
            }),
        }
    }

    pub(crate) fn dense(op: &'static str, what: &str, t: &Tensor) -> Result<()> {
        if !t.defined() || !t.is_contiguous() {
            return Err(Error::Tensor {
                op,
                what: what.to_string(),
                msg: "the tensor must be defined and contiguous".into(),
            });
        }
        Ok(())
    }

    /// Reduce `t` over all ranks, in place (every rank gets the result). `what` names the tensor
    /// in errors (e.g. "generator gradients").
    pub fn all_reduce(&self, what: &str, t: &mut Tensor, op: ReduceOp) -> Result<()> {
        Self::dense("all_reduce", what, t)?;
        let code = match op {
            ReduceOp::Sum => 0,
            ReduceOp::Avg => 1,
        };
        // SAFETY: `t` is a live tensor borrowed mutably for the call.
        let err = unsafe {
            ffi::shk_all_reduce(
                self.raw,
                t.as_mut_ptr().cast::<c_void>(),
                code,
                millis(self.timeout),
            )
        };
        self.check("all_reduce", what, self.timeout, err)
    }

    /// Overwrite `t` on every rank with rank `root`'s values, in place.
    pub fn broadcast(&self, what: &str, t: &mut Tensor, root: usize) -> Result<()> {
        Self::dense("broadcast", what, t)?;
        // SAFETY: `t` is a live tensor borrowed mutably for the call.
        let err = unsafe {
            ffi::shk_broadcast(
                self.raw,
                t.as_mut_ptr().cast::<c_void>(),
                root as c_int,
                millis(self.timeout),
            )
        };
        self.check("broadcast", what, self.timeout, err)
    }

    /// Every rank's `t` `[n, ...]` (same shape on all ranks), concatenated along dim 0 in rank
    /// order: `[world_size * n, ...]`.
    pub fn all_gather(&self, what: &str, t: &Tensor) -> Result<Tensor> {
        Self::dense("all_gather", what, t)?;
        if t.dim() == 0 {
            return Err(Error::Tensor {
                op: "all_gather",
                what: what.to_string(),
                msg: "a 0-d tensor cannot be concatenated: reshape it to [1]".into(),
            });
        }
        let mut size = t.size();
        size[0] *= self.world_size as i64;
        let mut out = Tensor::f_empty(size.as_slice(), (t.kind(), t.device()))?;
        let mut input = t.shallow_clone();
        // SAFETY: both tensors are live for the call; `out` is freshly allocated and contiguous.
        let err = unsafe {
            ffi::shk_all_gather(
                self.raw,
                out.as_mut_ptr().cast::<c_void>(),
                input.as_mut_ptr().cast::<c_void>(),
                millis(self.timeout),
            )
        };
        self.check("all_gather", what, self.timeout, err)?;
        Ok(out)
    }

    /// Wait until every rank reached this barrier (default timeout).
    pub fn barrier(&self, what: &str) -> Result<()> {
        self.barrier_with_timeout(what, self.timeout)
    }

    /// [`ProcessGroup::barrier`] with its own limit (e.g. longer, while rank 0 writes a
    /// checkpoint).
    pub fn barrier_with_timeout(&self, what: &str, timeout: Duration) -> Result<()> {
        // SAFETY: a plain call on the live handle.
        let err = unsafe { ffi::shk_barrier(self.raw, millis(timeout)) };
        self.check("barrier", what, timeout, err)
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: `raw` came from `shk_pg_new` and is freed once.
        unsafe { ffi::shk_pg_free(self.raw) };
    }
}

/// c10d's flight recorder (`TORCH_FR_BUFFER_SIZE`, default 2000 entries) records every
/// collective with a captured traceback, and in PyTorch 2.11 it inserts each new process group
/// into its status map before taking its lock (`FlightRecorder::record`): process groups that
/// enqueue collectives concurrently in one process race on that map (seen as a SIGSEGV in
/// `ProcessGroupGloo::enqueue` with several ranks on threads in one test binary). It is off here
/// unless the user sets `TORCH_FR_BUFFER_SIZE` (or the older `TORCH_NCCL_TRACE_BUFFER_SIZE`);
/// set before the first process group, as the recorder reads it once, when first used.
fn flight_recorder_off_by_default() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let set = |k: &str| std::env::var_os(k).is_some();
        if !set("TORCH_FR_BUFFER_SIZE") && !set("TORCH_NCCL_TRACE_BUFFER_SIZE") {
            std::env::set_var("TORCH_FR_BUFFER_SIZE", "0");
        }
    });
}
