// Fused nearest-code search, fp32 kernels v2 and v3 (the TF32 tensor-core kernel is nearest_tc.cu).
//
// v2 (nearest_l2_f32): ids[i] = argmin_k (cc[k] - 2 * z[i] . c[k]), ties to the lowest k,
// without materializing the N x K score matrix. Compiled at run time by NVRTC with
// -DDIM=<code dim>. fp32 FMA throughout (no TF32, no tensor cores).
//
// Layout (the classic 8x8 register-tiled SGEMM): a block of 256 threads (16 x 16) owns 128 rows
// of z and walks over the codebook in tiles of 128 codes. Thread (tx, ty) accumulates the dot
// products of rows {ty*4 + i, 64 + ty*4 + i} (i < 4) with codes {tx*4 + j, 64 + tx*4 + j}
// (j < 4): 8 x 8 accumulators, operands read from shared memory as float4 (conflict-free), so
// the inner loop is 64 FMA per 4 shared loads. Each dot product sums d = 0 .. DIM-1 in order.
// After each tile every thread folds its 8 x 8 scores into a running (best score, best index)
// per row; at the end the 16 threads sharing a row reduce by warp shuffles.
//
// Inputs are transposed (dimension-major), so that tile loads are coalesced and their
// shared-memory stores conflict-free: zt [DIM, n] f32, ct [DIM, k] f32, cc [k] f32 (|c|^2).
// Output: ids [n] int64. Indices are tracked as 32-bit (k < 2^31).

#ifndef DIM
#error "DIM must be defined"
#endif

#define BM 128
#define BN 128

__device__ __forceinline__ bool better(float s, int i, float bs, int bi) {
  return s < bs || (s == bs && i < bi);
}

extern "C" __global__ void __launch_bounds__(256, 2)
nearest_l2_f32(const float* __restrict__ zt, const float* __restrict__ ct,
               const float* __restrict__ cc, long long* __restrict__ ids,
               long long n, int k) {
  __shared__ __align__(16) float zs[DIM][BM];
  __shared__ __align__(16) float cs[DIM][BN];
  __shared__ float ccs[BN];

  const int tx = threadIdx.x;  // 0..15: codes
  const int ty = threadIdx.y;  // 0..15: rows
  const int tid = ty * 16 + tx;
  const long long row0 = (long long)blockIdx.x * BM;

  // z tile into zs[d][row]: consecutive threads, consecutive rows (rows past n are zero and
  // never written out).
  for (int e = tid; e < BM * DIM; e += 256) {
    int d = e / BM, r = e % BM;
    long long gr = row0 + r;
    zs[d][r] = gr < n ? zt[(long long)d * n + gr] : 0.0f;
  }

  float best[8];
  int besti[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    best[i] = __int_as_float(0x7f800000);  // +inf
    besti[i] = 0x7fffffff;
  }

  for (int k0 = 0; k0 < k; k0 += BN) {
    __syncthreads();  // the previous tile's readers are done (and zs is written, first time)
    for (int e = tid; e < BN * DIM; e += 256) {
      int d = e / BN, r = e % BN;
      int gk = k0 + r;
      cs[d][r] = gk < k ? ct[(long long)d * k + gk] : 0.0f;
    }
    if (tid < BN) {
      int gk = k0 + tid;
      ccs[tid] = gk < k ? cc[gk] : __int_as_float(0x7f800000);
    }
    __syncthreads();

    float acc[8][8];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;

#pragma unroll
    for (int d = 0; d < DIM; ++d) {
      float4 a0 = *reinterpret_cast<const float4*>(&zs[d][ty * 4]);
      float4 a1 = *reinterpret_cast<const float4*>(&zs[d][64 + ty * 4]);
      float4 b0 = *reinterpret_cast<const float4*>(&cs[d][tx * 4]);
      float4 b1 = *reinterpret_cast<const float4*>(&cs[d][64 + tx * 4]);
      float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
      float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }

#pragma unroll
    for (int j = 0; j < 8; ++j) {
      int col = (j < 4) ? (tx * 4 + j) : (64 + tx * 4 + (j - 4));
      int gk = k0 + col;
      float ccj = ccs[col];
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        // cc - 2 * dot: the scaling by 2 is exact, one rounding in the subtraction.
        float s = ccj - 2.0f * acc[i][j];
        if (gk < k && better(s, gk, best[i], besti[i])) {
          best[i] = s;
          besti[i] = gk;
        }
      }
    }
  }

  // The 16 threads of a row are lanes tx (+ 16 for odd ty) of one warp: reduce over tx.
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    float s = best[i];
    int bi = besti[i];
#pragma unroll
    for (int off = 8; off > 0; off >>= 1) {
      float os = __shfl_xor_sync(0xffffffffu, s, off, 16);
      int oi = __shfl_xor_sync(0xffffffffu, bi, off, 16);
      if (better(os, oi, s, bi)) {
        s = os;
        bi = oi;
      }
    }
    if (tx == 0) {
      int r = (i < 4) ? (ty * 4 + i) : (64 + ty * 4 + (i - 4));
      long long gr = row0 + r;
      if (gr < n) ids[gr] = (long long)bi;
    }
  }
}

// v3 (nearest_v3): the same tiles as v2, two changes that remove most non-FMA instructions:
//  * the score is F = -cc[k]/2 + sum_d z_d c_d, an argmax (ties to the lowest k): -cc/2 is the
//    exact start value of the FMA chain (scaling by 1/2 is exact), so no per-score subtraction;
//    F = -(cc - 2 z.c)/2 up to rounding (the bound in nearest.rs covers both orders).
//  * the per-tile fold takes the max of a row's 8 scores (7 FMNMX), compares once with the
//    running best, and only then (rarely, after the first tiles) looks for the first of the 8
//    columns holding it: columns grow with j, so the first equal one is the lowest index.
// Codes past k get -cc/2 = -inf and never win (strict >). Each F is the FMA chain
// F = fmaf(z_{D-1}, c_{D-1}, ... fmaf(z_0, c_0, -0.5f * cc[k])), d ascending: nearest_tc.cu
// recomputes exactly this chain for its candidates, so both kernels return the same ids.

extern "C" __global__ void __launch_bounds__(256, 2)
nearest_v3(const float* __restrict__ zt, const float* __restrict__ ct,
           const float* __restrict__ cc, long long* __restrict__ ids,
           long long n, int k) {
  __shared__ __align__(16) float zs[DIM][BM];
  __shared__ __align__(16) float cs[DIM][BN];
  __shared__ __align__(16) float hs[BN];

  const int tx = threadIdx.x;
  const int ty = threadIdx.y;
  const int tid = ty * 16 + tx;
  const long long row0 = (long long)blockIdx.x * BM;

  for (int e = tid; e < BM * DIM; e += 256) {
    int d = e / BM, r = e % BM;
    long long gr = row0 + r;
    zs[d][r] = gr < n ? zt[(long long)d * n + gr] : 0.0f;
  }

  float best[8];
  int besti[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    best[i] = __int_as_float(0xff800000);  // -inf
    besti[i] = 0x7fffffff;
  }

  for (int k0 = 0; k0 < k; k0 += BN) {
    __syncthreads();
    for (int e = tid; e < BN * DIM; e += 256) {
      int d = e / BN, r = e % BN;
      int gk = k0 + r;
      cs[d][r] = gk < k ? ct[(long long)d * k + gk] : 0.0f;
    }
    if (tid < BN) {
      int gk = k0 + tid;
      hs[tid] = gk < k ? -0.5f * cc[gk] : __int_as_float(0xff800000);
    }
    __syncthreads();

    float acc[8][8];
    {
      float4 h0 = *reinterpret_cast<const float4*>(&hs[tx * 4]);
      float4 h1 = *reinterpret_cast<const float4*>(&hs[64 + tx * 4]);
      float h[8] = {h0.x, h0.y, h0.z, h0.w, h1.x, h1.y, h1.z, h1.w};
      float4 a0 = *reinterpret_cast<const float4*>(&zs[0][ty * 4]);
      float4 a1 = *reinterpret_cast<const float4*>(&zs[0][64 + ty * 4]);
      float4 b0 = *reinterpret_cast<const float4*>(&cs[0][tx * 4]);
      float4 b1 = *reinterpret_cast<const float4*>(&cs[0][64 + tx * 4]);
      float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
      float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], h[j]);
    }
#pragma unroll
    for (int d = 1; d < DIM; ++d) {
      float4 a0 = *reinterpret_cast<const float4*>(&zs[d][ty * 4]);
      float4 a1 = *reinterpret_cast<const float4*>(&zs[d][64 + ty * 4]);
      float4 b0 = *reinterpret_cast<const float4*>(&cs[d][tx * 4]);
      float4 b1 = *reinterpret_cast<const float4*>(&cs[d][64 + tx * 4]);
      float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
      float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }

#pragma unroll
    for (int i = 0; i < 8; ++i) {
      float m = fmaxf(fmaxf(fmaxf(acc[i][0], acc[i][1]), fmaxf(acc[i][2], acc[i][3])),
                      fmaxf(fmaxf(acc[i][4], acc[i][5]), fmaxf(acc[i][6], acc[i][7])));
      if (m > best[i]) {
        int col = 0;
#pragma unroll
        for (int j = 7; j >= 0; --j) {
          // Scanning down, the last hit is the first (lowest) column equal to the max.
          if (acc[i][j] == m) col = (j < 4) ? (tx * 4 + j) : (64 + tx * 4 + (j - 4));
        }
        best[i] = m;
        besti[i] = k0 + col;
      }
    }
  }

#pragma unroll
  for (int i = 0; i < 8; ++i) {
    float s = best[i];
    int bi = besti[i];
#pragma unroll
    for (int off = 8; off > 0; off >>= 1) {
      float os = __shfl_xor_sync(0xffffffffu, s, off, 16);
      int oi = __shfl_xor_sync(0xffffffffu, bi, off, 16);
      if (os > s || (os == s && oi < bi)) {
        s = os;
        bi = oi;
      }
    }
    if (tx == 0) {
      int r = (i < 4) ? (ty * 4 + i) : (64 + ty * 4 + (i - 4));
      long long gr = row0 + r;
      // A row whose scores are all NaN keeps index 0x7fffffff: report code 0 instead.
      if (gr < n) ids[gr] = bi < k ? (long long)bi : 0LL;
    }
  }
}
