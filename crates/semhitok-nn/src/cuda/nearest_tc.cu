// Nearest-code search with a TF32 tensor-core score pass and an exact fp32 re-check: returns
// exactly the ids of nearest_v3 (nearest.cu), i.e. argmax_k F(i, k) with ties to the lowest k,
// where F is the fp32 FMA chain F = fmaf(z_{D-1}, c_{D-1}, ... fmaf(z_0, c_0, -0.5f * cc[k])).
// Compiled at run time by NVRTC with -DDIM=<code dim>; needs sm_80+ (mma.sync .tf32).
//
// Why the result is F's argmax. Let T(i, k) = z.c - cc/2 in exact arithmetic (of the fp32
// inputs) and A(i, k) the tensor-core score (operands rounded to TF32 with cvt.rna, relative
// error <= 2^-11 each; products and sums in the tensor core's fp32 accumulation, -cc/2 as the
// C operand). With S = sum_d |z_d c_d| <= |z|_2 |c|_2 (Cauchy-Schwarz) and H = |cc/2|:
//   |A - T| <= eA = (2^-10 + 2^-22) S + 2^-10 (S + H)    (the second term allows an accumulation
//                 as coarse as 10 bits, far coarser than any fp32 tensor-core accumulation)
//   |F - T| <= eF = gamma_D (S + H) < 2^-18 (S + H) for D <= 44.
// For the F-argmax k* and any k: A(k*) >= T(k*) - eA >= F(k*) - eF - eA >= F(k) - eF - eA
// >= T(k) - 2 eF - eA >= A(k) - 2 (eF + eA). So k* is among the candidates
// { k : A(k) >= max_j A(j) - W } whenever W >= 2 (eA + eF); we take
//   W_i = 2^-7 (|z_i|_2 * cmax + hmax) + 1e-30 >= 2 (eA + eF)
// (cmax = max_k |c_k|_2, hmax = max_k cc[k]/2; 2^-7 > 2 (2^-10 + 2^-22 + 2^-10 + 2^-18), the
// spare factor covers the fp32 rounding of |z_i| and cmax; 1e-30 covers flushed subnormals).
// Every candidate's F is recomputed with the chain above, from the fp32 row-major z and codes,
// and the largest (F, -k) wins (one 64-bit atomicMax per candidate on a shared key).
//
// Layout: a block of 2 * BM threads (BM / 16 warps) owns BM rows and walks the codebook twice in
// tiles of 128 codes. Warp w covers rows (w / 2) * 32 .. +32 and codes (w % 2) * 64 .. +64 of a tile:
// 2 x 8 mma.m16n8k8 per k-step, 64 fp32 accumulators. Pass 1 keeps the running max of A per
// row; pass 2 recomputes A and records every (row, code) with A >= max - W in a shared list
// (on overflow it checks the candidate at once: slower, same result). The A fragments (z, TF32)
// stay in registers for the whole kernel, so the z tile's shared buffer is reused for the code
// tiles. Shared tiles are dimension-major with row strides of BM + 8 and 136 words (both 8 mod
// 32), so the fragment loads (lane = 4 g + t reads [t][g]) are conflict-free.
//
// Inputs: zt [DIM, n] f32, ct [DIM, k] f32 (dimension-major copies), z [n, DIM] f32, c [k, DIM]
// f32 (row-major, for the re-check), cc [k] f32 (|c|^2), ccmax [1] f32 (max_k cc[k], so
// cmax = sqrt(ccmax), hmax = ccmax / 2). Output: ids [n] int64.

#ifndef DIM
#error "DIM must be defined"
#endif

// TC_BM = 128 (256 threads) or 256 (512 threads, entry nearest_tc256: half the code-tile
// traffic per row).
#ifndef TC_BM
#define TC_BM 128
#endif
#define BM TC_BM
#define NT (BM * 2)
#define BN 128
#define KS ((DIM + 7) / 8)
#define DP (KS * 8)
#define LDS_ 136
#define LDZ (BM + 8)
#define CAP 1536

__device__ __forceinline__ unsigned to_tf32(float x) {
  unsigned r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
}

__device__ __forceinline__ void mma_tf32(float& d0, float& d1, float& d2, float& d3,
                                         const unsigned (&a)[4], unsigned b0, unsigned b1,
                                         float c0, float c1, float c2, float c3) {
  asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%10,%11,%12,%13};\n"
      : "=f"(d0), "=f"(d1), "=f"(d2), "=f"(d3)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(c0), "f"(c1),
        "f"(c2), "f"(c3));
}

// The exact score F of nearest_v3 as a key ordered like (F, -k): -0 is folded into +0 first
// (they are equal scores), then the float bits are made monotone.
__device__ __forceinline__ unsigned long long exact_key(const float* __restrict__ z,
                                                        const float* __restrict__ c,
                                                        const float* __restrict__ cc,
                                                        long long row, int gk) {
  float f = -0.5f * cc[gk];
  const float* zr = z + row * DIM;
  const float* cr = c + (long long)gk * DIM;
#pragma unroll
  for (int d = 0; d < DIM; ++d) f = fmaf(zr[d], cr[d], f);
  f = f + 0.0f;
  unsigned u = __float_as_uint(f);
  u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return ((unsigned long long)u << 32) | (unsigned long long)(0xffffffffu - (unsigned)gk);
}

#if TC_BM == 256
#define TC_ENTRY nearest_tc256
#define TC_MINB 1
#else
#define TC_ENTRY nearest_tc
#define TC_MINB 2
#endif

extern "C" __global__ void __launch_bounds__(NT, TC_MINB)
TC_ENTRY(const float* __restrict__ zt, const float* __restrict__ ct,
           const float* __restrict__ z, const float* __restrict__ c,
           const float* __restrict__ cc, const float* __restrict__ ccmax,
           long long* __restrict__ ids, long long n, int k) {
  // One buffer: first the z tile ([DP][LDZ]: its A fragments then live in registers), then the
  // code tiles ([DP][LDS_]).
  // (TC_BM = 128 keeps two buffers: the shared index math of one costs registers there.)
#if TC_BM == 256
  __shared__ __align__(16) unsigned buf[DP * (LDZ > LDS_ ? LDZ : LDS_)];
#define ZS(d, r) buf[(d) * LDZ + (r)]
#define CS(d, r) buf[(d) * LDS_ + (r)]
#else
  __shared__ __align__(16) unsigned zs[DP][LDZ];
  __shared__ __align__(16) unsigned cs[DP][LDS_];
#define ZS(d, r) zs[d][r]
#define CS(d, r) cs[d][r]
#endif
  __shared__ float hs[BN];
  __shared__ float rmax[2][BM];
  __shared__ float thr_s[BM];
  __shared__ unsigned long long key[BM];
  __shared__ int cand_k[CAP];
  __shared__ unsigned char cand_r[CAP];
  __shared__ int ncand;

  const int tid = threadIdx.x;
  const int lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int wm = warp >> 1, wn = warp & 1;
  const long long row0 = (long long)blockIdx.x * BM;

  for (int e = tid; e < BM * DP; e += NT) {
    int d = e / BM, r = e % BM;
    long long gr = row0 + r;
    ZS(d, r) = to_tf32((d < DIM && gr < n) ? zt[(long long)d * n + gr] : 0.0f);
  }
  if (tid < BM) key[tid] = 0ull;
  if (tid == 0) ncand = 0;
  __syncthreads();

  unsigned a[KS][2][4];
#pragma unroll
  for (int ks = 0; ks < KS; ++ks)
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
      int r = wm * 32 + mt * 16 + g;
      a[ks][mt][0] = ZS(ks * 8 + t, r);
      a[ks][mt][1] = ZS(ks * 8 + t, r + 8);
      a[ks][mt][2] = ZS(ks * 8 + t + 4, r);
      a[ks][mt][3] = ZS(ks * 8 + t + 4, r + 8);
    }

  // Rows of this thread: q = mt * 2 + hf -> wm * 32 + mt * 16 + hf * 8 + g.
  // rt: the running max of A in pass 0, then the candidate threshold in pass 1.
  float rt[4];
#pragma unroll
  for (int q = 0; q < 4; ++q) rt[q] = __int_as_float(0xff800000);

  for (int pass = 0; pass < 2; ++pass) {
    for (int k0 = 0; k0 < k; k0 += BN) {
      __syncthreads();  // the previous tile's (or the z tile's) readers are done
      for (int e = tid; e < BN * DP; e += NT) {
        int d = e / BN, r = e % BN;
        int gk = k0 + r;
        CS(d, r) = to_tf32((d < DIM && gk < k) ? ct[(long long)d * k + gk] : 0.0f);
      }
      if (tid < BN) {
        int gk = k0 + tid;
        hs[tid] = gk < k ? -0.5f * cc[gk] : __int_as_float(0xff800000);
      }
      __syncthreads();

      float acc[2][8][4];
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        int col = wn * 64 + nt * 8 + t * 2;
        float h0 = hs[col], h1 = hs[col + 1];
        int cb = wn * 64 + nt * 8 + g;
        unsigned b0 = CS(t, cb), b1 = CS(t + 4, cb);
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
          mma_tf32(acc[mt][nt][0], acc[mt][nt][1], acc[mt][nt][2], acc[mt][nt][3], a[0][mt],
                   b0, b1, h0, h1, h0, h1);
#pragma unroll
        for (int ks = 1; ks < KS; ++ks) {
          unsigned b0k = CS(ks * 8 + t, cb), b1k = CS(ks * 8 + t + 4, cb);
#pragma unroll
          for (int mt = 0; mt < 2; ++mt)
            mma_tf32(acc[mt][nt][0], acc[mt][nt][1], acc[mt][nt][2], acc[mt][nt][3],
                     a[ks][mt], b0k, b1k, acc[mt][nt][0], acc[mt][nt][1], acc[mt][nt][2],
                     acc[mt][nt][3]);
        }
      }

#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int mt = q >> 1, hf = q & 1;
        float m = __int_as_float(0xff800000);
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
          m = fmaxf(m, fmaxf(acc[mt][nt][hf * 2], acc[mt][nt][hf * 2 + 1]));
        if (pass == 0) {
          rt[q] = fmaxf(rt[q], m);
        } else if (m >= rt[q]) {
          const int r = wm * 32 + mt * 16 + hf * 8 + g;
#pragma unroll
          for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int cc2 = 0; cc2 < 2; ++cc2) {
              int gk = k0 + wn * 64 + nt * 8 + t * 2 + cc2;
              // gk < k: a row of NaN scores has thr = -inf, which codes past k (-inf) reach.
              if (acc[mt][nt][hf * 2 + cc2] >= rt[q] && gk < k) {
                int slot = atomicAdd(&ncand, 1);
                if (slot < CAP) {
                  cand_k[slot] = gk;
                  cand_r[slot] = (unsigned char)r;
                } else {
                  atomicMax(&key[r], exact_key(z, c, cc, row0 + r, gk));
                }
              }
            }
        }
      }
    }

    if (pass == 0) {
      // Row max over the 4 lanes t of a row, then over the two column warps.
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        float m = rt[q];
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
        if (t == 0) rmax[wn][wm * 32 + (q >> 1) * 16 + (q & 1) * 8 + g] = m;
      }
      __syncthreads();
      if (tid < BM) {
        long long gr = row0 + tid;
        float zn = 0.0f;
        if (gr < n) {
          const float* zr = z + gr * DIM;
#pragma unroll
          for (int d = 0; d < DIM; ++d) zn = fmaf(zr[d], zr[d], zn);
        }
        const float cm = ccmax[0];  // max_k |c_k|^2
        float w = 0.0078125f * (sqrtf(zn) * sqrtf(cm) + 0.5f * cm) + 1e-30f;
        // Rows past n: no candidates (+inf).
        thr_s[tid] = gr < n ? fmaxf(rmax[0][tid], rmax[1][tid]) - w : __int_as_float(0x7f800000);
      }
      __syncthreads();
#pragma unroll
      for (int q = 0; q < 4; ++q) rt[q] = thr_s[wm * 32 + (q >> 1) * 16 + (q & 1) * 8 + g];
    }
  }

  __syncthreads();
  const int nc = min(ncand, CAP);
  for (int s = tid; s < nc; s += NT) {
    int r = cand_r[s];
    if (row0 + r < n) atomicMax(&key[r], exact_key(z, c, cc, row0 + r, cand_k[s]));
  }
  __syncthreads();
  if (tid < BM) {
    long long gr = row0 + tid;
    unsigned long long kk = key[tid];
    // key 0: no candidate (a row of NaN scores): code 0, as nearest_v3.
    if (gr < n) ids[gr] = kk == 0ull ? 0LL : (long long)(0xffffffffu - (unsigned)(kk & 0xffffffffull));
  }
}

// ---------------------------------------------------------------------------------------------
// tc1: the same scores and the same exact re-check in ONE walk over the codebook.
//
// Why one walk is enough. tc lists { k : A(k) >= max_j A(j) - W } after a first pass has found
// max_j A(j). But any threshold R - W with R <= max_j A(j) also lists the F-argmax k*, because
// A(k*) >= max_j A(j) - W >= R - W (the inequality of the header). tc1 uses for R the running
// max of A over the codes seen so far (each lane's own, and after every stage of 128 codes the
// max over the 4 lanes that share a row): a code is listed when A(k) >= R - W at the moment it
// is scored (the first stage is scored twice: once only to raise R, then listing; the tensor
// cores return the same A both times, and R stays <= max_j A(j) either way). The listed set grows (codes listed before R rose are extra), never loses k*, and
// the largest exact key (F, -k) over any set that contains k* is k*'s: tc1 returns exactly
// v3's ids. Extra candidates cost one exact re-check each (D FMAs), nothing else.
//
// Layout. pack_codes_tc1 converts the codebook to TF32 once per call, already in the order of
// the mma B fragments ([8-code tile][q][lane] uint4, each lane's b0/b1 of two k-steps), and
// -cc/2 in the order of the C fragments ([tile][t] float2), so a stage is a straight 16-byte
// copy (cp.async, double-buffered) and every fragment load is one conflict-free LDS.128. A
// block of 4 warps owns 256 rows; each warp 64 rows (4 m16 tiles) whose A fragments (z, TF32)
// live in registers for the whole kernel, so each B fragment feeds 4 mma per k-step. The
// candidate list is in shared memory, flushed (every listed code re-checked exactly into a
// per-row 64-bit key) whenever it is half full at a stage boundary and at the end; a push into
// a full list re-checks at once.
//
// Inputs: z [n, DIM] f32, c [k, DIM] f32 (row-major), cc [k] f32, ccmax [1] f32, bp / hp from
// pack_codes_tc1 (ntiles = ceil(k / 128) * 16 tiles). Output: ids [n] int64.

#define T1_KSP ((KS + 1) & ~1)
#define T1_NQ (T1_KSP / 2)
#define T1_WARPS 4
#define T1_NT (T1_WARPS * 32)
#define T1_MT 4
#define T1_BM (T1_WARPS * T1_MT * 16)
#define T1_TN 16
#define T1_STAGE (T1_TN * T1_NQ * 32)
#define T1_CAP 1024

extern "C" __global__ void pack_codes_tc1(const float* __restrict__ c,
                                          const float* __restrict__ cc, uint4* __restrict__ bp,
                                          float2* __restrict__ hp, int k, int ntiles) {
  const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= (long long)ntiles * T1_NQ * 32) return;
  const int lane = (int)(e % 32), q = (int)((e / 32) % T1_NQ);
  const int nt = (int)(e / (32 * T1_NQ));
  const int g = lane >> 2, t = lane & 3;
  const int code = nt * 8 + g;
  unsigned v[4];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int d0 = (q * 2 + h) * 8 + t, d1 = d0 + 4;
    v[h * 2] = to_tf32(code < k && d0 < DIM ? c[(long long)code * DIM + d0] : 0.0f);
    v[h * 2 + 1] = to_tf32(code < k && d1 < DIM ? c[(long long)code * DIM + d1] : 0.0f);
  }
  bp[e] = make_uint4(v[0], v[1], v[2], v[3]);
  if (q == 0 && g == 0) {
    const int c0 = nt * 8 + 2 * t;
    const float ninf = __int_as_float(0xff800000);
    hp[nt * 4 + t] = make_float2(c0 < k ? -0.5f * cc[c0] : ninf, c0 + 1 < k ? -0.5f * cc[c0 + 1] : ninf);
  }
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}

// Copies stage s (T1_TN tiles of codes and their -cc/2) into buffer `buf`.
__device__ __forceinline__ void t1_load_stage(uint4* bs, float2* hs, const uint4* __restrict__ bp,
                                              const float2* __restrict__ hp, int s, int tid) {
  const uint4* src = bp + (long long)s * T1_STAGE;
  for (int e = tid; e < T1_STAGE; e += T1_NT) cp_async16(bs + e, src + e);
  const uint4* hsrc = reinterpret_cast<const uint4*>(hp + (long long)s * T1_TN * 4);
  for (int e = tid; e < T1_TN * 2; e += T1_NT) cp_async16(reinterpret_cast<uint4*>(hs) + e, hsrc + e);
  asm volatile("cp.async.commit_group;\n" ::);
}

// exact_key out of line: the list-full path is rare, and inlining its 2 * DIM loads at every
// push site made the kernel's code several times larger than its hot loop.
__device__ __noinline__ unsigned long long exact_key_cold(const float* __restrict__ z,
                                                          const float* __restrict__ c,
                                                          const float* __restrict__ cc,
                                                          long long row, int gk) {
  return exact_key(z, c, cc, row, gk);
}

// The shared-memory candidate list of a block and what a re-check needs.
struct T1List {
  int* cand_k;
  unsigned char* cand_r;
  int* ncand;
  unsigned long long* key;
  const float* __restrict__ z;
  const float* __restrict__ c;
  const float* __restrict__ cc;
  long long row0;
};

// Lists code gk for block row r (or re-checks it at once when the list is full).
__device__ __forceinline__ void t1_push(const T1List& L, int r, int gk) {
  const int slot = atomicAdd(L.ncand, 1);
  if (slot < T1_CAP) {
    L.cand_k[slot] = gk;
    L.cand_r[slot] = (unsigned char)r;
  } else {
    atomicMax(&L.key[r], exact_key_cold(L.z, L.c, L.cc, L.row0 + r, gk));
  }
}

// One 8-code tile of the stage in (B, H) against the warp's 64 rows. All 4 m-tiles' mma chains
// first (independent: the tensor pipe overlaps them), then one branch for the rare case that
// some row of this thread reaches its threshold. LIST = false only raises the running max (the
// warm-up over the first stage, so that the first tiles do not list nearly every code).
template <bool LIST>
__device__ __forceinline__ void t1_tile(const uint4* B, const float2* H, int nt, int lane, int g,
                                        int t, int warp, int gk, int k,
                                        const unsigned (&a)[T1_MT][KS][4],
                                        float (&rm)[T1_MT][2], float (&th)[T1_MT][2],
                                        const float (&wr)[T1_MT][2], const T1List& L) {
  unsigned b[T1_KSP][2];
#pragma unroll
  for (int q = 0; q < T1_NQ; ++q) {
    const uint4 v = B[(nt * T1_NQ + q) * 32 + lane];
    b[2 * q][0] = v.x;
    b[2 * q][1] = v.y;
    b[2 * q + 1][0] = v.z;
    b[2 * q + 1][1] = v.w;
  }
  const float2 h = H[nt * 4 + t];
  // d[mt]: row g (codes gk, gk + 1), row g + 8 (codes gk, gk + 1).
  float d[T1_MT][4];
#pragma unroll
  for (int mt = 0; mt < T1_MT; ++mt)
    mma_tf32(d[mt][0], d[mt][1], d[mt][2], d[mt][3], a[mt][0], b[0][0], b[0][1], h.x, h.y, h.x,
             h.y);
#pragma unroll
  for (int ks = 1; ks < KS; ++ks)
#pragma unroll
    for (int mt = 0; mt < T1_MT; ++mt)
      mma_tf32(d[mt][0], d[mt][1], d[mt][2], d[mt][3], a[mt][ks], b[ks][0], b[ks][1], d[mt][0],
               d[mt][1], d[mt][2], d[mt][3]);
  float m[T1_MT][2];
  bool any = false;
#pragma unroll
  for (int mt = 0; mt < T1_MT; ++mt) {
    m[mt][0] = fmaxf(d[mt][0], d[mt][1]);
    m[mt][1] = fmaxf(d[mt][2], d[mt][3]);
    any |= (m[mt][0] >= th[mt][0]) | (m[mt][1] >= th[mt][1]);
  }
  if (!LIST) {
#pragma unroll
    for (int mt = 0; mt < T1_MT; ++mt) {
      rm[mt][0] = fmaxf(rm[mt][0], m[mt][0]);
      rm[mt][1] = fmaxf(rm[mt][1], m[mt][1]);
    }
    return;
  }
  if (any) {
#pragma unroll
    for (int mt = 0; mt < T1_MT; ++mt)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        if (m[mt][hf] >= th[mt][hf]) {
          const int r = warp * 64 + mt * 16 + hf * 8 + g;
          if (d[mt][hf * 2] >= th[mt][hf] && gk < k) t1_push(L, r, gk);
          if (d[mt][hf * 2 + 1] >= th[mt][hf] && gk + 1 < k) t1_push(L, r, gk + 1);
          rm[mt][hf] = fmaxf(rm[mt][hf], m[mt][hf]);
          th[mt][hf] = rm[mt][hf] - wr[mt][hf];
        }
      }
  }
}

// The 4 lanes of a row share their running max: a tighter threshold, same proof.
__device__ __forceinline__ void t1_share(float (&rm)[T1_MT][2], float (&th)[T1_MT][2],
                                         const float (&wr)[T1_MT][2]) {
#pragma unroll
  for (int mt = 0; mt < T1_MT; ++mt)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      float v = rm[mt][hf];
      v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
      v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
      rm[mt][hf] = v;
      th[mt][hf] = v - wr[mt][hf];
    }
}

extern "C" __global__ void __launch_bounds__(T1_NT, 2)
nearest_tc1(const float* __restrict__ z, const float* __restrict__ c,
            const float* __restrict__ cc, const float* __restrict__ ccmax,
            const uint4* __restrict__ bp, const float2* __restrict__ hp,
            long long* __restrict__ ids, long long n, int k, int ntiles) {
  __shared__ __align__(16) uint4 bs[2][T1_STAGE];
  __shared__ __align__(16) float2 hs[2][T1_TN * 4];
  __shared__ unsigned long long key[T1_BM];
  __shared__ float wsm[T1_BM];
  __shared__ int cand_k[T1_CAP];
  __shared__ unsigned char cand_r[T1_CAP];
  __shared__ int ncand;

  const int tid = threadIdx.x;
  const int lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const long long row0 = (long long)blockIdx.x * T1_BM;
  const int nstages = ntiles / T1_TN;

  t1_load_stage(bs[0], hs[0], bp, hp, 0, tid);

  // The window W of each row (as tc); NaN for rows past n, so that no comparison lists them.
  const float cm = ccmax[0];
  for (int r = tid; r < T1_BM; r += T1_NT) {
    const long long gr = row0 + r;
    float w = __int_as_float(0x7fc00000);
    if (gr < n) {
      const float* zr = z + gr * DIM;
      float zn = 0.0f;
#pragma unroll
      for (int d = 0; d < DIM; ++d) zn = fmaf(zr[d], zr[d], zn);
      w = 0.0078125f * (sqrtf(zn) * sqrtf(cm) + 0.5f * cm) + 1e-30f;
    }
    wsm[r] = w;
    key[r] = 0ull;
  }
  if (tid == 0) ncand = 0;

  // A fragments of the warp's 64 rows, straight from the row-major z.
  unsigned a[T1_MT][KS][4];
#pragma unroll
  for (int mt = 0; mt < T1_MT; ++mt) {
    const long long r0 = row0 + warp * 64 + mt * 16 + g, r1 = r0 + 8;
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      const int d0 = ks * 8 + t, d1 = d0 + 4;
      a[mt][ks][0] = to_tf32(r0 < n && d0 < DIM ? z[r0 * DIM + d0] : 0.0f);
      a[mt][ks][1] = to_tf32(r1 < n && d0 < DIM ? z[r1 * DIM + d0] : 0.0f);
      a[mt][ks][2] = to_tf32(r0 < n && d1 < DIM ? z[r0 * DIM + d1] : 0.0f);
      a[mt][ks][3] = to_tf32(r1 < n && d1 < DIM ? z[r1 * DIM + d1] : 0.0f);
    }
  }
  __syncthreads();

  // Per row of this thread (mt, hf: row warp * 64 + mt * 16 + hf * 8 + g): the window, the
  // running max R of A and the listing threshold R - W.
  float wr[T1_MT][2], rm[T1_MT][2], th[T1_MT][2];
#pragma unroll
  for (int mt = 0; mt < T1_MT; ++mt)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      wr[mt][hf] = wsm[warp * 64 + mt * 16 + hf * 8 + g];
      rm[mt][hf] = __int_as_float(0xff800000);
      th[mt][hf] = rm[mt][hf] - wr[mt][hf];
    }

  const T1List L{cand_k, cand_r, &ncand, key, z, c, cc, row0};
  for (int s = 0; s < nstages; ++s) {
    const int buf = s & 1;
    if (s + 1 < nstages) {
      t1_load_stage(bs[buf ^ 1], hs[buf ^ 1], bp, hp, s + 1, tid);
    } else {
      asm volatile("cp.async.commit_group;\n" ::);
    }
    asm volatile("cp.async.wait_group 1;\n" ::);
    __syncthreads();  // stage s is in bs[buf] for every thread

    if (ncand >= T1_CAP / 2) {
      const int nc = min(ncand, T1_CAP);
      for (int i = tid; i < nc; i += T1_NT) {
        const int r = cand_r[i];
        atomicMax(&key[r], exact_key(z, c, cc, row0 + r, cand_k[i]));
      }
      __syncthreads();
      if (tid == 0) ncand = 0;
      __syncthreads();
    }

    const uint4* B = bs[buf];
    const float2* H = hs[buf];
    const int k0 = s * T1_TN * 8;
    if (s == 0) {
      for (int nt = 0; nt < T1_TN; ++nt)
        t1_tile<false>(B, H, nt, lane, g, t, warp, k0 + nt * 8 + 2 * t, k, a, rm, th, wr, L);
      t1_share(rm, th, wr);
    }
#pragma unroll 2
    for (int nt = 0; nt < T1_TN; ++nt)
      t1_tile<true>(B, H, nt, lane, g, t, warp, k0 + nt * 8 + 2 * t, k, a, rm, th, wr, L);
    t1_share(rm, th, wr);
    __syncthreads();  // bs[buf] is read by everyone before the next stage overwrites it
  }

  const int nc = min(ncand, T1_CAP);
  for (int i = tid; i < nc; i += T1_NT) {
    const int r = cand_r[i];
    atomicMax(&key[r], exact_key(z, c, cc, row0 + r, cand_k[i]));
  }
  __syncthreads();
  for (int r = tid; r < T1_BM; r += T1_NT) {
    const long long gr = row0 + r;
    const unsigned long long kk = key[r];
    if (gr < n) ids[gr] = kk == 0ull ? 0LL : (long long)(0xffffffffu - (unsigned)(kk & 0xffffffffull));
  }
}
