//! [`GradReducer`]: a flat gradient buffer all-reduced in buckets that overlap the backward pass
//! (`csrc/grad_reducer.cpp`), and [`bucket_starts`], the bucket layout.

use crate::error::{Error, Result};
use crate::ffi;
use crate::process_group::{millis, ProcessGroup, ReduceOp};
use std::ffi::{c_int, c_void};
use std::sync::Arc;
use tch::Tensor;

/// Bucket boundaries over a flat buffer whose parameters lie at `params[i] = (offset, numel)`
/// (in any order; together they tile `[0, total)`): buckets are contiguous ranges at parameter
/// boundaries, filled in buffer order up to `cap` elements (a parameter larger than `cap` is a
/// bucket of its own). Returns the start of each bucket (the first is 0, the last bucket runs to
/// the end). `cap <= 0`: one bucket.
pub fn bucket_starts(params: &[(i64, i64)], cap: i64) -> Vec<i64> {
    let mut by_offset: Vec<(i64, i64)> = params.iter().copied().filter(|p| p.1 > 0).collect();
    by_offset.sort_unstable();
    let mut starts = vec![0i64];
    let mut fill = 0i64;
    for (off, n) in by_offset {
        if cap > 0 && fill > 0 && fill + n > cap {
            starts.push(off);
            fill = 0;
        }
        fill += n;
    }
    starts
}

/// A flat gradient buffer averaged (or summed) over the ranks in buckets: with
/// [`GradReducer::arm`] before the backward pass, each bucket is all-reduced asynchronously as soon
/// as autograd has accumulated all its parameters' gradients (a post-accumulate-grad hook on
/// every parameter); [`GradReducer::finish`] after it launches the rest and waits. Without `arm`,
/// `finish` all-reduces every bucket then (bucketed, no overlap).
///
/// Requirements: every parameter's `.grad` is its view of the buffer (the optimizer's flat
/// gradient buffer after its first step), one backward per armed step, and the same bucket layout
/// and launch order on every rank. The result is element for element that of one all-reduce of
/// the whole buffer (same reduction per element, only split into several collectives).
#[derive(Debug)]
pub struct GradReducer {
    raw: *mut ffi::ShkReducer,
    pg: Arc<ProcessGroup>,
    what: String,
    n_buckets: usize,
}

// SAFETY: the C++ state is behind a mutex and refcounted; the hooks only hold weak references.
unsafe impl Send for GradReducer {}

impl GradReducer {
    /// A reducer over `flat` (1-d, contiguous) whose parameters `params[i] = (variable, offset)`
    /// have their gradients at `[offset, offset + numel)`, in the buckets of `starts`
    /// ([`bucket_starts`]). Installs the hooks (removed on drop). `what` names the buffer in errors.
    pub fn new(
        pg: Arc<ProcessGroup>,
        what: &str,
        flat: &Tensor,
        params: &[(Tensor, i64)],
        starts: &[i64],
        op: ReduceOp,
    ) -> Result<Self> {
        ProcessGroup::dense("all_reduce", what, flat)?;
        if flat.dim() != 1 || starts.is_empty() {
            return Err(Error::Tensor {
                op: "all_reduce",
                what: what.into(),
                msg: format!(
                    "a bucketed all-reduce needs a 1-d buffer and at least one bucket (shape {:?}, {} buckets)",
                    flat.size(),
                    starts.len()
                ),
            });
        }
        let mut flat = flat.shallow_clone();
        let mut vars: Vec<Tensor> = params.iter().map(|(v, _)| v.shallow_clone()).collect();
        let ptrs: Vec<*mut c_void> = vars.iter_mut().map(|v| v.as_mut_ptr().cast()).collect();
        let offsets: Vec<i64> = params.iter().map(|(_, o)| *o).collect();
        let mut raw: *mut ffi::ShkReducer = std::ptr::null_mut();
        // SAFETY: every pointer is live for the call; the shim copies the tensor handles.
        let err = unsafe {
            ffi::shk_reducer_new(
                pg.raw(),
                flat.as_mut_ptr().cast(),
                ptrs.as_ptr(),
                offsets.as_ptr(),
                offsets.len() as i64,
                starts.as_ptr(),
                starts.len() as i64,
                c_int::from(op == ReduceOp::Avg),
                millis(pg.timeout()),
                &mut raw,
            )
        };
        pg.check("all_reduce", what, pg.timeout(), err)?;
        Ok(Self {
            raw,
            pg,
            what: what.to_string(),
            n_buckets: starts.len(),
        })
    }

    /// Buckets.
    pub fn n_buckets(&self) -> usize {
        self.n_buckets
    }

    /// Launch the buckets in `order` (a permutation of `0..n_buckets`, the same on every rank;
    /// the default is `0, 1, ...`). A bucket that completes before those ahead of it waits.
    pub fn set_order(&self, order: &[i64]) -> Result<()> {
        // SAFETY: `order` is live for the call; the shim copies it.
        let err =
            unsafe { ffi::shk_reducer_set_order(self.raw, order.as_ptr(), order.len() as i64) };
        self.pg
            .check("all_reduce", &self.what, self.pg.timeout(), err)
    }

    /// The next backward pass launches each bucket as soon as its gradients are accumulated.
    pub fn arm(&self) {
        // SAFETY: a plain call on the live handle.
        unsafe { ffi::shk_reducer_arm(self.raw) };
    }

    /// After the backward pass: launch the buckets not launched yet, wait for all (on NCCL the
    /// current CUDA stream waits, the host does not) and average. Returns the buckets in the
    /// order they became complete during an armed backward (empty without [`Self::arm`]).
    pub fn finish(&self) -> Result<Vec<i64>> {
        let mut done = vec![0i64; self.n_buckets];
        let mut n = 0i64;
        // SAFETY: `done` has room for every bucket.
        let err = unsafe { ffi::shk_reducer_finish(self.raw, done.as_mut_ptr(), &mut n) };
        self.pg
            .check("all_reduce", &self.what, self.pg.timeout(), err)?;
        done.truncate(n.clamp(0, self.n_buckets as i64) as usize);
        Ok(done)
    }
}

impl Drop for GradReducer {
    fn drop(&mut self) {
        // SAFETY: `raw` came from `shk_reducer_new` and is freed once.
        unsafe { ffi::shk_reducer_free(self.raw) };
    }
}

#[cfg(test)]
mod tests {
    use super::bucket_starts;

    #[test]
    fn buckets_tile_at_parameter_boundaries() {
        // Sizes 3, 5, 2, 10, 1 laid out in that order (given shuffled).
        let p = [(10, 10), (0, 3), (8, 2), (3, 5), (20, 1)];
        assert_eq!(bucket_starts(&p, 0), [0]);
        assert_eq!(bucket_starts(&p, 8), [0, 8, 10, 20]);
        assert_eq!(bucket_starts(&p, 1), [0, 3, 8, 10, 20]);
        assert_eq!(bucket_starts(&p, 100), [0]);
        // Property: for random layouts, starts are increasing parameter offsets, and each
        // bucket is within the cap unless it holds one parameter.
        let mut seed = 7u64;
        let mut rnd = |m: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % m
        };
        for _ in 0..200 {
            let n = 1 + rnd(20) as usize;
            let sizes: Vec<i64> = (0..n).map(|_| 1 + rnd(50) as i64).collect();
            let mut off = 0;
            let p: Vec<(i64, i64)> = sizes
                .iter()
                .map(|&s| {
                    off += s;
                    (off - s, s)
                })
                .collect();
            let total = off;
            let cap = 1 + rnd(120) as i64;
            let st = bucket_starts(&p, cap);
            assert_eq!(st[0], 0);
            assert!(st.windows(2).all(|w| w[0] < w[1]));
            assert!(st.iter().all(|s| p.iter().any(|q| q.0 == *s)));
            for (k, &s) in st.iter().enumerate() {
                let e = st.get(k + 1).copied().unwrap_or(total);
                let members = p.iter().filter(|q| q.0 >= s && q.0 < e).count();
                assert!(e - s <= cap || members == 1, "{st:?} cap {cap} {p:?}");
            }
        }
    }
}
