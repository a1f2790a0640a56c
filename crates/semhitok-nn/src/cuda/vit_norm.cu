// The trained ViTs' layer norm under bf16 autocast as one autograd node (issue 21): an fp32
// residual stream in, the bf16 operand of the next GEMM out. LibTorch runs that as the fp32
// layer norm plus autocast's fp32 -> bf16 cast, and in backward as the bf16 -> fp32 cast of the
// incoming gradient plus the layer norm's two backward kernels.
//
// With the residual add before the norm (`d` given): s = x + float(d) (d bf16, the value LibTorch's
// mixed f32 + bf16 add gives) is the row normed, and is written out for the next residual add.
//
// ln_fwd_f32_bf16: per row of H values, v = x (+ d), mean, rstd = rsqrt(var + eps) (two passes
//   over the row in registers, fp32), y = bf16((v - mean) * rstd * gamma + beta); mean and rstd
//   saved, v saved to `s` when given. One block of 128 threads per row; H % 8 == 0, H <= 2048,
//   16-byte aligned rows. `d` and `s` may be null.
// ln_bwd_dx: per row, with xhat = (x - mean) * rstd and g = dy * gamma (dy bf16):
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) (+ dres, the gradient the residual stream
//   brings, fp32), fp32; also rounded to bf16 into dx16 (the gradient of the bf16 addend) when
//   given. `dres` and `dx16` may be null.
// ln_bwd_partial: column sums of dy * xhat and dy over row chunks of `rows_per` rows:
//   part_g[chunk, j], part_b[chunk, j].
// colsum2: dg[j] = sum over chunks of part_g[., j], db[j] likewise (blockIdx.y picks which), by
//   chunk_colsum.

// bf2f, f2bf, lo, hi, pack, block_sum, chunk_colsum: bf16.cuh (prepended).

#define MAXV 2


extern "C" __global__ void __launch_bounds__(128)
ln_fwd_f32_bf16(const float4* __restrict__ x, const uint4* __restrict__ d,
                const float4* __restrict__ gamma, const float4* __restrict__ beta,
                float4* __restrict__ s, uint4* __restrict__ y, float* __restrict__ mean_out,
                float* __restrict__ rstd_out, int h8, float eps) {
  __shared__ float part[4];
  const long long row = blockIdx.x;
  float v[MAXV][8];
  float sum = 0.f;
#pragma unroll
  for (int k = 0; k < MAXV; ++k) {
    const int c = threadIdx.x + k * 128;
    if (c < h8) {
      const float4 a = x[(row * h8 + c) * 2], b = x[(row * h8 + c) * 2 + 1];
      v[k][0] = a.x; v[k][1] = a.y; v[k][2] = a.z; v[k][3] = a.w;
      v[k][4] = b.x; v[k][5] = b.y; v[k][6] = b.z; v[k][7] = b.w;
      if (d != nullptr) {
        const uint4 e = d[row * h8 + c];
        v[k][0] += lo(e.x); v[k][1] += hi(e.x); v[k][2] += lo(e.y); v[k][3] += hi(e.y);
        v[k][4] += lo(e.z); v[k][5] += hi(e.z); v[k][6] += lo(e.w); v[k][7] += hi(e.w);
        if (s != nullptr) {
          s[(row * h8 + c) * 2] = make_float4(v[k][0], v[k][1], v[k][2], v[k][3]);
          s[(row * h8 + c) * 2 + 1] = make_float4(v[k][4], v[k][5], v[k][6], v[k][7]);
        }
      }
#pragma unroll
      for (int j = 0; j < 8; ++j) sum += v[k][j];
    }
  }
  const float n = (float)(h8 * 8);
  const float mean = block_sum(sum, part) / n;
  float sq = 0.f;
#pragma unroll
  for (int k = 0; k < MAXV; ++k)
    if (threadIdx.x + k * 128 < h8)
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const float c = v[k][j] - mean;
        sq += c * c;
      }
  const float rstd = rsqrtf(block_sum(sq, part) / n + eps);
  if (threadIdx.x == 0) {
    mean_out[row] = mean;
    rstd_out[row] = rstd;
  }
#pragma unroll
  for (int k = 0; k < MAXV; ++k) {
    const int c = threadIdx.x + k * 128;
    if (c < h8) {
      const float4 g0 = gamma[2 * c], g1 = gamma[2 * c + 1];
      const float4 b0 = beta[2 * c], b1 = beta[2 * c + 1];
#define NORM1(i, gg, bb) f2bf((v[k][i] - mean) * rstd * (gg) + (bb))
      y[row * h8 + c] = make_uint4(pack(NORM1(0, g0.x, b0.x), NORM1(1, g0.y, b0.y)),
                                   pack(NORM1(2, g0.z, b0.z), NORM1(3, g0.w, b0.w)),
                                   pack(NORM1(4, g1.x, b1.x), NORM1(5, g1.y, b1.y)),
                                   pack(NORM1(6, g1.z, b1.z), NORM1(7, g1.w, b1.w)));
#undef NORM1
    }
  }
}

extern "C" __global__ void __launch_bounds__(128)
ln_bwd_dx(const uint4* __restrict__ dy, const float4* __restrict__ x, const float4* __restrict__ gamma,
          const float* __restrict__ mean_in, const float* __restrict__ rstd_in,
          const float4* __restrict__ dres, float4* __restrict__ dx, uint4* __restrict__ dx16,
          int h8) {
  __shared__ float part[4];
  const long long row = blockIdx.x;
  const float mean = mean_in[row], rstd = rstd_in[row];
  float xh[MAXV][8], g[MAXV][8];
  float s1 = 0.f, s2 = 0.f;
#pragma unroll
  for (int k = 0; k < MAXV; ++k) {
    const int c = threadIdx.x + k * 128;
    if (c < h8) {
      const float4 a = x[(row * h8 + c) * 2], b = x[(row * h8 + c) * 2 + 1];
      const float xv[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
      const uint4 d = dy[row * h8 + c];
      const float dv[8] = {lo(d.x), hi(d.x), lo(d.y), hi(d.y), lo(d.z), hi(d.z), lo(d.w), hi(d.w)};
      const float4 g0 = gamma[2 * c], g1 = gamma[2 * c + 1];
      const float gv[8] = {g0.x, g0.y, g0.z, g0.w, g1.x, g1.y, g1.z, g1.w};
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        xh[k][j] = (xv[j] - mean) * rstd;
        g[k][j] = dv[j] * gv[j];
        s1 += g[k][j];
        s2 += g[k][j] * xh[k][j];
      }
    }
  }
  const float n = (float)(h8 * 8);
  const float m1 = block_sum(s1, part) / n;
  const float m2 = block_sum(s2, part) / n;
#pragma unroll
  for (int k = 0; k < MAXV; ++k) {
    const int c = threadIdx.x + k * 128;
    if (c < h8) {
      float o[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) o[j] = rstd * (g[k][j] - m1 - xh[k][j] * m2);
      if (dres != nullptr) {
        const float4 a = dres[(row * h8 + c) * 2], b = dres[(row * h8 + c) * 2 + 1];
        o[0] += a.x; o[1] += a.y; o[2] += a.z; o[3] += a.w;
        o[4] += b.x; o[5] += b.y; o[6] += b.z; o[7] += b.w;
      }
      dx[(row * h8 + c) * 2] = make_float4(o[0], o[1], o[2], o[3]);
      dx[(row * h8 + c) * 2 + 1] = make_float4(o[4], o[5], o[6], o[7]);
      if (dx16 != nullptr)
        dx16[row * h8 + c] = make_uint4(pack(f2bf(o[0]), f2bf(o[1])), pack(f2bf(o[2]), f2bf(o[3])),
                                        pack(f2bf(o[4]), f2bf(o[5])), pack(f2bf(o[6]), f2bf(o[7])));
    }
  }
}

extern "C" __global__ void __launch_bounds__(256)
ln_bwd_partial(const unsigned short* __restrict__ dy, const float* __restrict__ x,
               const float* __restrict__ mean_in, const float* __restrict__ rstd_in,
               float* __restrict__ part_g, float* __restrict__ part_b, int h, long long rows,
               int rows_per) {
  const int j = blockIdx.x * 256 + threadIdx.x;
  if (j >= h) return;
  const long long r0 = (long long)blockIdx.y * rows_per;
  const long long r1 = min(rows, r0 + rows_per);
  float sg = 0.f, sb = 0.f;
#pragma unroll 8
  for (long long r = r0; r < r1; ++r) {
    const float d = bf2f(dy[r * h + j]);
    sg += d * ((x[r * h + j] - mean_in[r]) * rstd_in[r]);
    sb += d;
  }
  part_g[(long long)blockIdx.y * h + j] = sg;
  part_b[(long long)blockIdx.y * h + j] = sb;
}

extern "C" __global__ void __launch_bounds__(256)
colsum2(const float* __restrict__ part_g, const float* __restrict__ part_b, float* __restrict__ dg,
        float* __restrict__ db, int h, int chunks) {
  __shared__ float acc[8][33];
  const int j = blockIdx.x * 32 + (threadIdx.x & 31);
  const float t = chunk_colsum(blockIdx.y == 0 ? part_g : part_b, h, chunks, j, acc);
  if ((threadIdx.x >> 5) == 0 && j < h) (blockIdx.y == 0 ? dg : db)[j] = t;
}
