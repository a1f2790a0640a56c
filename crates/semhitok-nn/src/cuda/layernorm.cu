// The frozen teacher's residual add and the layer norm after it, for a bf16 residual stream on
// CUDA (issue 21). Under bf16 autocast LibTorch runs that as three kernels and two extra trips
// through memory: the bf16 add, a bf16 -> fp32 copy of the sum (autocast runs layer_norm in
// fp32), the fp32 layer norm, and the fp32 -> bf16 cast the next GEMM does. This is one kernel:
//
// add_layernorm_bf16: per row of H values, s = bf16(x + d) (the bf16 add's rounding; with d null,
//   s = x), written to xo unless xo is null; y = bf16((s - mean) * rstd * gamma + beta) with mean,
//   variance and rstd = rsqrt(var + eps) over the row in fp32 (two passes over the row held in
//   registers; LibTorch uses Welford, so fp32 statistics can differ in the last bits) and fp32
//   gamma, beta (the f32 norm weights autocast uses). One block of 128 threads per row; H % 8 == 0,
//   H <= 128 * 8 * MAXV, 16-byte aligned rows.

// bf2f, f2bf, lo, hi, pack, block_sum: bf16.cuh (prepended).

#define MAXV 4


extern "C" __global__ void __launch_bounds__(128)
add_layernorm_bf16(const uint4* __restrict__ x, const uint4* __restrict__ d,
                   const float4* __restrict__ gamma, const float4* __restrict__ beta,
                   uint4* __restrict__ xo, uint4* __restrict__ y, int h8, float eps) {
  __shared__ float part[4];
  const long long row = blockIdx.x;
  float v[MAXV][8];
  float sum = 0.f;
#pragma unroll
  for (int k = 0; k < MAXV; ++k) {
    const int c = threadIdx.x + k * 128;
    if (c < h8) {
      const uint4 a = x[row * h8 + c];
      unsigned av[4] = {a.x, a.y, a.z, a.w};
      if (d != nullptr) {
        const uint4 b = d[row * h8 + c];
        const unsigned bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
        for (int j = 0; j < 4; ++j)
          av[j] = pack(f2bf(lo(av[j]) + lo(bv[j])), f2bf(hi(av[j]) + hi(bv[j])));
        if (xo != nullptr) xo[row * h8 + c] = make_uint4(av[0], av[1], av[2], av[3]);
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        v[k][2 * j] = lo(av[j]);
        v[k][2 * j + 1] = hi(av[j]);
        sum += v[k][2 * j] + v[k][2 * j + 1];
      }
    }
  }
  const float n = (float)(h8 * 8);
  const float mean = block_sum(sum, part) / n;
  float sq = 0.f;
#pragma unroll
  for (int k = 0; k < MAXV; ++k) {
    if (threadIdx.x + k * 128 < h8) {
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const float c = v[k][j] - mean;
        sq += c * c;
      }
    }
  }
  const float rstd = rsqrtf(block_sum(sq, part) / n + eps);
#pragma unroll
  for (int k = 0; k < MAXV; ++k) {
    const int c = threadIdx.x + k * 128;
    if (c < h8) {
      const float4 g0 = gamma[2 * c], g1 = gamma[2 * c + 1];
      const float4 b0 = beta[2 * c], b1 = beta[2 * c + 1];
      const float g[8] = {g0.x, g0.y, g0.z, g0.w, g1.x, g1.y, g1.z, g1.w};
      const float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
      unsigned o[4];
#pragma unroll
      for (int j = 0; j < 4; ++j)
        o[j] = pack(f2bf((v[k][2 * j] - mean) * rstd * g[2 * j] + b[2 * j]),
                    f2bf((v[k][2 * j + 1] - mean) * rstd * g[2 * j + 1] + b[2 * j + 1]));
      y[row * h8 + c] = make_uint4(o[0], o[1], o[2], o[3]);
    }
  }
}
