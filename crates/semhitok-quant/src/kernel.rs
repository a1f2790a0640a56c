//! Register-blocked micro-kernels for the fused nearest-code search.
//!
//! The codebook is packed into panels of [`LANES`] codes, transposed so that one dimension of 16
//! codes is contiguous: `panels[p][d][lane]`. A micro-tile of [`MR`] queries x 16 codes keeps its
//! 6 x 16 dot products in twelve 8-lane registers while it walks the D dimension (one broadcast of
//! a query value feeds two FMAs), so the score matrix never reaches memory. Each panel's scores are
//! compared against the running best of each query with one vector compare; the scalar update (which
//! keeps the lowest index on ties) runs only when some lane beats a running best, which becomes rare
//! after the first panels.
//!
//! Both metrics are an argmax of `q . c + bias[c]`: bias 0 for cosine (codes pre-normalized),
//! `-|c|^2 / 2` for squared L2. Padding lanes carry bias `-inf` and zero codes, so they never win.

/// Codes per panel (two 8-lane AVX registers).
pub(crate) const LANES: usize = 16;
/// Queries per micro-tile.
pub(crate) const MR: usize = 6;

/// Which implementation runs the micro-kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// AVX2 + FMA intrinsics (chosen at runtime when the CPU has them).
    Avx2Fma,
    /// Plain Rust on fixed-size arrays (auto-vectorized for the baseline target).
    Portable,
}

impl Kernel {
    /// The fastest kernel this CPU supports.
    pub fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Kernel::Avx2Fma;
            }
        }
        Kernel::Portable
    }
}

/// Running best of one micro-tile: score and code index per query row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Best {
    pub score: [f32; MR],
    pub idx: [u32; MR],
}

impl Best {
    pub(crate) fn new() -> Best {
        Best {
            score: [f32::NEG_INFINITY; MR],
            idx: [0; MR],
        }
    }
}

/// Scalar update of `best` from one panel's scores; strict `>` in ascending code order keeps the lowest index on ties.
#[inline]
fn update_best(a: &[[f32; LANES]; MR], p: usize, best: &mut Best) {
    for i in 0..MR {
        for l in 0..LANES {
            let v = a[i][l];
            if v > best.score[i] {
                best.score[i] = v;
                best.idx[i] = (p * LANES + l) as u32;
            }
        }
    }
}

/// Scans panels `p0..p1` for one micro-tile `q` (`[MR][d]`, row-major), updating `best`.
///
/// `panels`: `[n_panels][d][LANES]`; `bias`: `[n_panels * LANES]`.
pub(crate) fn argmax_tile(
    kernel: Kernel,
    q: &[f32],
    d: usize,
    panels: &[f32],
    bias: &[f32],
    p0: usize,
    p1: usize,
    best: &mut Best,
) {
    assert!(q.len() >= MR * d && panels.len() >= p1 * d * LANES && bias.len() >= p1 * LANES);
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2Fma => {
            // SAFETY: `Kernel::Avx2Fma` is only constructed by `detect` after checking the CPU
            // features, and the bounds above cover every pointer offset the kernel reads.
            unsafe {
                match d {
                    8 => avx2::argmax::<8>(q, d, panels, bias, p0, p1, best),
                    16 => avx2::argmax::<16>(q, d, panels, bias, p0, p1, best),
                    32 => avx2::argmax::<32>(q, d, panels, bias, p0, p1, best),
                    64 => avx2::argmax::<64>(q, d, panels, bias, p0, p1, best),
                    _ => avx2::argmax::<0>(q, d, panels, bias, p0, p1, best),
                }
            }
        }
        _ => match d {
            8 => portable_argmax::<8>(q, d, panels, bias, p0, p1, best),
            32 => portable_argmax::<32>(q, d, panels, bias, p0, p1, best),
            _ => portable_argmax::<0>(q, d, panels, bias, p0, p1, best),
        },
    }
}

/// The scores of one micro-tile against panel `p` (`out[i][lane]`), for the top-k search.
pub(crate) fn score_tile(
    q: &[f32],
    d: usize,
    panels: &[f32],
    bias: &[f32],
    p: usize,
    out: &mut [[f32; LANES]; MR],
) {
    let c = &panels[p * d * LANES..(p + 1) * d * LANES];
    let b = &bias[p * LANES..(p + 1) * LANES];
    for row in out.iter_mut() {
        row.copy_from_slice(b);
    }
    for dd in 0..d {
        let cv: &[f32; LANES] = c[dd * LANES..(dd + 1) * LANES]
            .try_into()
            .expect("panel row");
        for i in 0..MR {
            let qv = q[i * d + dd];
            for l in 0..LANES {
                out[i][l] += qv * cv[l];
            }
        }
    }
}

/// Portable version of the micro-kernel; `D` = 0 means "use the runtime `d`".
fn portable_argmax<const D: usize>(
    q: &[f32],
    d_rt: usize,
    panels: &[f32],
    bias: &[f32],
    p0: usize,
    p1: usize,
    best: &mut Best,
) {
    let d = if D == 0 { d_rt } else { D };
    let mut a = [[0f32; LANES]; MR];
    for p in p0..p1 {
        score_tile(q, d, panels, bias, p, &mut a);
        update_best(&a, p, best);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{update_best, Best, LANES, MR};
    use std::arch::x86_64::*;

    /// AVX2/FMA micro-kernel: 6 queries x 16 codes in 12 accumulators. `D` = 0: runtime `d_rt`.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; `q` holds `MR * d` values, `panels` `p1 * d * LANES`,
    /// `bias` `p1 * LANES` (checked by the caller).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn argmax<const D: usize>(
        q: &[f32],
        d_rt: usize,
        panels: &[f32],
        bias: &[f32],
        p0: usize,
        p1: usize,
        best: &mut Best,
    ) {
        let d = if D == 0 { d_rt } else { D };
        let qp = q.as_ptr();
        for p in p0..p1 {
            // SAFETY: offsets stay below p1 * d * LANES (panels), p1 * LANES (bias) and MR * d (q).
            unsafe {
                let cp = panels.as_ptr().add(p * d * LANES);
                let b0 = _mm256_loadu_ps(bias.as_ptr().add(p * LANES));
                let b1 = _mm256_loadu_ps(bias.as_ptr().add(p * LANES + 8));
                let mut a = [[b0, b1]; MR];
                for dd in 0..d {
                    let c0 = _mm256_loadu_ps(cp.add(dd * LANES));
                    let c1 = _mm256_loadu_ps(cp.add(dd * LANES + 8));
                    for i in 0..MR {
                        let qb = _mm256_broadcast_ss(&*qp.add(i * d + dd));
                        a[i][0] = _mm256_fmadd_ps(qb, c0, a[i][0]);
                        a[i][1] = _mm256_fmadd_ps(qb, c1, a[i][1]);
                    }
                }
                let mut any = _mm256_setzero_ps();
                for i in 0..MR {
                    let m = _mm256_max_ps(a[i][0], a[i][1]);
                    let t = _mm256_set1_ps(best.score[i]);
                    any = _mm256_or_ps(any, _mm256_cmp_ps::<_CMP_GT_OQ>(m, t));
                }
                if _mm256_movemask_ps(any) != 0 {
                    let mut buf = [[0f32; LANES]; MR];
                    for i in 0..MR {
                        _mm256_storeu_ps(buf[i].as_mut_ptr(), a[i][0]);
                        _mm256_storeu_ps(buf[i].as_mut_ptr().add(8), a[i][1]);
                    }
                    update_best(&buf, p, best);
                }
            }
        }
    }
}

/// SGHC kernel for `D % 8 == 0` on AVX2: eight codes of a sub-codebook are scored at once
/// (one 8-lane accumulator per code, reduced by a transposing `hadd` tree into one register of
/// eight scores), the best lane is found with a vector min/max + `tzcnt` (lowest index on ties),
/// and the sub-codebook of the token 8 rows ahead is prefetched (ids are random, so the hardware
/// prefetcher cannot guess it).
///
/// Returns the first row whose scores were not all finite.
///
/// # Safety
/// AVX2 and FMA must be available; `q` holds `sem.len() * d` values, every `sem[r] < ps.len() / (m * d)`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn sghc_block_avx2_d8<const D: usize>(
    q: &[f32],
    d_rt: usize,
    sem: &[u32],
    ps: &[f32],
    m: usize,
    l2: bool,
    ids: &mut [u32],
    scores: &mut [f32],
) -> Option<usize> {
    use std::arch::x86_64::*;
    const PREFETCH: usize = 8;
    let d = if D == 0 { d_rt } else { D };
    let chunks = d / 8;
    let stride = m * d;
    let mut bad = None;

    #[inline(always)]
    fn hsum8(v: [__m256; 8]) -> __m256 {
        // SAFETY (of the intrinsics): only called from the AVX2 kernel below.
        unsafe {
            let t0 = _mm256_hadd_ps(v[0], v[1]);
            let t1 = _mm256_hadd_ps(v[2], v[3]);
            let t2 = _mm256_hadd_ps(v[4], v[5]);
            let t3 = _mm256_hadd_ps(v[6], v[7]);
            let u0 = _mm256_hadd_ps(t0, t1);
            let u1 = _mm256_hadd_ps(t2, t3);
            let lo = _mm256_permute2f128_ps::<0x20>(u0, u1);
            let hi = _mm256_permute2f128_ps::<0x31>(u0, u1);
            _mm256_add_ps(lo, hi)
        }
    }

    let lane_idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let inf = _mm256_set1_ps(f32::INFINITY);
    let fill = if l2 {
        inf
    } else {
        _mm256_set1_ps(f32::NEG_INFINITY)
    };
    for r in 0..sem.len() {
        // SAFETY: all offsets are within `q` (r * d + d <= q.len()) and within sub-codebook
        // sem[r] of `ps` (checked by the caller); prefetches never fault.
        unsafe {
            prefetch_ahead(ps, sem, r, PREFETCH, stride);
            let qp = q.as_ptr().add(r * d);
            let sub = ps.as_ptr().add(sem[r] as usize * stride);
            let mut best = if l2 { f32::INFINITY } else { f32::NEG_INFINITY };
            let mut bj = 0u32;
            let mut ok = true;
            let mut g = 0;
            while g < m {
                let cnt = (m - g).min(8);
                let mut acc = [_mm256_setzero_ps(); 8];
                let mut acc2 = [_mm256_setzero_ps(); 8];
                for ch in 0..chunks {
                    let qv = _mm256_loadu_ps(qp.add(ch * 8));
                    for jj in 0..8 {
                        // Lanes past the end of the sub-codebook re-read its last code; they are masked below.
                        let c = sub.add((g + jj.min(cnt - 1)) * d + ch * 8);
                        let cv = _mm256_loadu_ps(c);
                        if l2 {
                            let t = _mm256_sub_ps(qv, cv);
                            acc[jj] = _mm256_fmadd_ps(t, t, acc[jj]);
                        } else {
                            acc[jj] = _mm256_fmadd_ps(qv, cv, acc[jj]);
                            acc2[jj] = _mm256_fmadd_ps(cv, cv, acc2[jj]);
                        }
                    }
                }
                let mut v = hsum8(acc);
                if !l2 {
                    let n = _mm256_max_ps(_mm256_sqrt_ps(hsum8(acc2)), _mm256_set1_ps(1e-12));
                    v = _mm256_div_ps(v, n);
                }
                let valid = _mm256_castsi256_ps(_mm256_cmpgt_epi32(
                    _mm256_set1_epi32(cnt as i32),
                    lane_idx,
                ));
                let valid_bits = (1i32 << cnt) - 1;
                let fin = _mm256_cmp_ps::<_CMP_LT_OQ>(_mm256_and_ps(v, abs_mask), inf);
                ok &= _mm256_movemask_ps(fin) & valid_bits == valid_bits;
                let v = _mm256_blendv_ps(fill, v, valid);
                let h = if l2 {
                    let a = _mm256_min_ps(v, _mm256_permute2f128_ps::<1>(v, v));
                    let b = _mm256_min_ps(a, _mm256_permute_ps::<0b0100_1110>(a));
                    _mm256_min_ps(b, _mm256_permute_ps::<0b1011_0001>(b))
                } else {
                    let a = _mm256_max_ps(v, _mm256_permute2f128_ps::<1>(v, v));
                    let b = _mm256_max_ps(a, _mm256_permute_ps::<0b0100_1110>(a));
                    _mm256_max_ps(b, _mm256_permute_ps::<0b1011_0001>(b))
                };
                let gb = _mm256_cvtss_f32(h);
                if (l2 && gb < best) || (!l2 && gb > best) {
                    best = gb;
                    let hit = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(v, h)) as u32;
                    bj = (g as u32) + hit.trailing_zeros();
                }
                g += 8;
            }
            if !l2 {
                // Cosine: divide by |q| (a per-row constant, so the argmax is unaffected).
                let mut qq = _mm256_setzero_ps();
                for ch in 0..chunks {
                    let qv = _mm256_loadu_ps(qp.add(ch * 8));
                    qq = _mm256_fmadd_ps(qv, qv, qq);
                }
                let qn = hsum8([qq, qq, qq, qq, qq, qq, qq, qq]);
                best /= _mm256_cvtss_f32(_mm256_sqrt_ps(qn)).max(1e-12);
            }
            ids[r] = bj;
            scores[r] = best;
            if !ok && bad.is_none() {
                bad = Some(r);
            }
        }
    }
    bad
}

/// Packed SGHC kernel: each sub-codebook is stored transposed as one contiguous block
/// `[bias (m4) | dim 0 (m4) | ... | dim D-1 (m4)]` with `m4 = m` rounded up to 4, so the `m`
/// candidate scores of a token live across the lanes of `NV8` 8-lane registers plus (when
/// `HAS4`) one 4-lane register: one broadcast of `q[d]` feeds all of them, and no horizontal
/// sum is needed. Maximizes `q.c + bias` (bias `-inf` on padding lanes).
///
/// Writes the best lane index and its raw score per row.
///
/// # Safety
/// AVX2/FMA available; `m4 == 8 * NV8 + 4 * HAS4`; every block `sem[r]` lies inside `blocks`;
/// `q` holds `sem.len() * d` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn sghc_packed_avx2<const D: usize, const NV8: usize, const HAS4: bool>(
    q: &[f32],
    d_rt: usize,
    sem: &[u32],
    blocks: &[f32],
    ids: &mut [u32],
    raw: &mut [f32],
) {
    use std::arch::x86_64::*;
    const PREFETCH: usize = 8;
    let d = if D == 0 { d_rt } else { D };
    let m4 = 8 * NV8 + if HAS4 { 4 } else { 0 };
    let block = (d + 1) * m4;
    for r in 0..sem.len() {
        // SAFETY: offsets stay inside block sem[r] (checked by the caller) and row r of q.
        unsafe {
            prefetch_ahead(blocks, sem, r, PREFETCH, block);
            let b = blocks.as_ptr().add(sem[r] as usize * block);
            let qp = q.as_ptr().add(r * d);
            // Four independent partial sums (dims dd = 4i + p) hide the FMA latency; set 0 starts
            // from the bias. Every lane sees the same operation order, so equal codes tie exactly.
            let mut acc8 = [[_mm256_setzero_ps(); NV8]; 4];
            let mut acc4 = [_mm_setzero_ps(); 4];
            for (v, a) in acc8[0].iter_mut().enumerate() {
                *a = _mm256_loadu_ps(b.add(8 * v));
            }
            if HAS4 {
                acc4[0] = _mm_loadu_ps(b.add(8 * NV8));
            }
            let mut dd = 0;
            while dd + 4 <= d {
                for p in 0..4 {
                    let c = b.add((dd + p + 1) * m4);
                    let qb = _mm256_broadcast_ss(&*qp.add(dd + p));
                    for (v, a) in acc8[p].iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(qb, _mm256_loadu_ps(c.add(8 * v)), *a);
                    }
                    if HAS4 {
                        acc4[p] = _mm_fmadd_ps(
                            _mm256_castps256_ps128(qb),
                            _mm_loadu_ps(c.add(8 * NV8)),
                            acc4[p],
                        );
                    }
                }
                dd += 4;
            }
            while dd < d {
                let c = b.add((dd + 1) * m4);
                let qb = _mm256_broadcast_ss(&*qp.add(dd));
                for (v, a) in acc8[0].iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(qb, _mm256_loadu_ps(c.add(8 * v)), *a);
                }
                if HAS4 {
                    acc4[0] = _mm_fmadd_ps(
                        _mm256_castps256_ps128(qb),
                        _mm_loadu_ps(c.add(8 * NV8)),
                        acc4[0],
                    );
                }
                dd += 1;
            }
            let mut acc8_sum = [_mm256_setzero_ps(); NV8];
            for (v, a) in acc8_sum.iter_mut().enumerate() {
                *a = _mm256_add_ps(
                    _mm256_add_ps(acc8[0][v], acc8[1][v]),
                    _mm256_add_ps(acc8[2][v], acc8[3][v]),
                );
            }
            let acc8 = acc8_sum;
            let acc4 = _mm_add_ps(_mm_add_ps(acc4[0], acc4[1]), _mm_add_ps(acc4[2], acc4[3]));
            // Max over all lanes, then the lowest lane holding it.
            let mut m = if HAS4 {
                acc4
            } else {
                _mm_set1_ps(f32::NEG_INFINITY)
            };
            for a in &acc8 {
                m = _mm_max_ps(
                    m,
                    _mm_max_ps(_mm256_castps256_ps128(*a), _mm256_extractf128_ps::<1>(*a)),
                );
            }
            m = _mm_max_ps(m, _mm_permute_ps::<0b0100_1110>(m));
            m = _mm_max_ps(m, _mm_permute_ps::<0b1011_0001>(m));
            let best = _mm_cvtss_f32(m);
            let mb = _mm256_set1_ps(best);
            let mut mask: u64 = 0;
            for (v, a) in acc8.iter().enumerate() {
                mask |= (_mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(*a, mb)) as u64) << (8 * v);
            }
            if HAS4 {
                mask |= (_mm_movemask_ps(_mm_cmpeq_ps(acc4, _mm256_castps256_ps128(mb))) as u64)
                    << (8 * NV8);
            }
            ids[r] = if mask == 0 { 0 } else { mask.trailing_zeros() };
            raw[r] = best;
        }
    }
}

/// The one prefetch loop of the SGHC kernels: while row `r` is scanned, pull the sub-codebook
/// of row `r + ahead` into L1, `len` f32s starting at `data[sem[r + ahead] * len]`, one 64-byte
/// line at a time (nothing past the last row).
///
/// # Safety
/// `sem[i] * len + len <= data.len()` for every row `i` (the callers check the semantic ids);
/// prefetches never fault.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn prefetch_ahead(data: &[f32], sem: &[u32], r: usize, ahead: usize, len: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    if r + ahead < sem.len() {
        // SAFETY: within block sem[r + ahead] of `data` (the caller's contract).
        let base = unsafe { data.as_ptr().add(sem[r + ahead] as usize * len) }.cast::<i8>();
        let mut off = 0;
        while off < len * 4 {
            // SAFETY: `off < len * 4` bytes stays inside that block.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(base.add(off)) };
            off += 64;
        }
    }
}
