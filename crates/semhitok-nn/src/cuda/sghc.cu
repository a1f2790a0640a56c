// SGHC's gathered sub-codebook search as one kernel: token i searches only the m codes of its
// semantic id's sub-codebook, j[i] = argmin_{jj < m} sum_d (z[i, d] - c[sem[i] * m + jj, d])^2,
// ties to the lowest jj (torch.argmin), without the [M, m, D] gather of the candidates.
// Compiled at run time by NVRTC with -DDIM=<pixel code dim>. One thread per token; the codebook
// ([K_sem * m, D] f32, 6 MiB at the paper's shapes) stays in L2.
//
// Each distance is the fp32 chain acc = fmaf(e_d, e_d, acc), d ascending, e_d = z_d - c_d
// (rounded): all terms are >= 0, so its relative error is at most gamma_{D+2}; two distances
// can order differently from fp64 only if they are within gamma_{D+2} (d1 + d2) of each other.
//
// Inputs: z [M, DIM] f32, codes [K_sem * m, DIM] f32, sem [M] int64 (checked by the caller to
// be in 0..K_sem). Output: j [M] int64.

#ifndef DIM
#error "DIM must be defined"
#endif

extern "C" __global__ void __launch_bounds__(256)
sghc_nearest(const float* __restrict__ z, const float* __restrict__ codes,
             const long long* __restrict__ sem, long long* __restrict__ j, long long M, int m) {
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= M) return;
  float zr[DIM];
#pragma unroll
  for (int d = 0; d < DIM; ++d) zr[d] = z[i * DIM + d];
  const float* base = codes + sem[i] * (long long)m * DIM;
  float best = __int_as_float(0x7f800000);
  int bj = 0;
  for (int jj = 0; jj < m; ++jj) {
    const float* cr = base + (long long)jj * DIM;
    float cv[DIM];
#if DIM % 4 == 0
    // Rows are 16-byte aligned (DIM * 4 bytes from a 256-byte aligned base): vector loads.
#pragma unroll
    for (int q = 0; q < DIM / 4; ++q) {
      float4 v = __ldg(reinterpret_cast<const float4*>(cr) + q);
      cv[4 * q] = v.x;
      cv[4 * q + 1] = v.y;
      cv[4 * q + 2] = v.z;
      cv[4 * q + 3] = v.w;
    }
#else
#pragma unroll
    for (int d = 0; d < DIM; ++d) cv[d] = __ldg(cr + d);
#endif
    float acc = 0.0f;
#pragma unroll
    for (int d = 0; d < DIM; ++d) {
      float e = zr[d] - cv[d];
      acc = fmaf(e, e, acc);
    }
    if (acc < best) {
      best = acc;
      bj = jj;
    }
  }
  j[i] = (long long)bj;
}
