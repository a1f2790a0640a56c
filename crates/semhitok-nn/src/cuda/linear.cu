// The bias gradient of the trained linear layers' autograd node (linear.rs): the column sums of
// the bf16 output gradient dy [rows, C], fp32 accumulation, rounded to bf16 and added into the
// bias's bf16 gradient (`out = bf16(out + sum)`: with `out` zero, as it is at the first use in a
// backward pass, exactly bf16(sum), what LibTorch's bf16 sum and autograd's accumulation give).
//
// bias_partial: block (bx, chunk) sums the chunk's rows for the 32 column groups of 8 columns
//   starting at 8 * 32 * bx; its 4 warps take every 4th row (warp w rows r0 + w, r0 + w + 4, ..;
//   one warp reads 512 contiguous bytes of a row), then the 4 warps' sums are added in shared
//   memory in a fixed order: part[chunk, C] fp32. C % 8 == 0, 16-byte aligned rows.
// bias_finish: out[j] = bf16(float(out[j]) + sum over chunks of part[., j]), the sum by
//   chunk_colsum (a fixed order: deterministic).

// bf2f, f2bf, lo, hi, chunk_colsum: bf16.cuh (prepended).

extern "C" __global__ void __launch_bounds__(128)
bias_partial(const uint4* __restrict__ dy, float* __restrict__ part, int c8, long long rows,
             int rows_per) {
  __shared__ float acc[4][32][9];
  const int t = threadIdx.x & 31, w = threadIdx.x >> 5;
  const int q = blockIdx.x * 32 + t;
  const long long r0 = (long long)blockIdx.y * rows_per;
  const long long r1 = min(rows, r0 + rows_per);
  float s[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  if (q < c8) {
#pragma unroll 4
    for (long long r = r0 + w; r < r1; r += 4) {
      const uint4 d = dy[r * c8 + q];
      s[0] += lo(d.x); s[1] += hi(d.x); s[2] += lo(d.y); s[3] += hi(d.y);
      s[4] += lo(d.z); s[5] += hi(d.z); s[6] += lo(d.w); s[7] += hi(d.w);
    }
  }
#pragma unroll
  for (int k = 0; k < 8; ++k) acc[w][t][k] = s[k];
  __syncthreads();
  if (w == 0 && q < c8) {
#pragma unroll
    for (int k = 0; k < 8; ++k) s[k] = ((acc[0][t][k] + acc[1][t][k]) + acc[2][t][k]) + acc[3][t][k];
    float4* p = reinterpret_cast<float4*>(part + (long long)blockIdx.y * c8 * 8) + 2 * q;
    p[0] = make_float4(s[0], s[1], s[2], s[3]);
    p[1] = make_float4(s[4], s[5], s[6], s[7]);
  }
}

extern "C" __global__ void __launch_bounds__(256)
bias_finish(const float* __restrict__ part, unsigned short* __restrict__ out, int c, int chunks) {
  __shared__ float acc[8][33];
  const int j = blockIdx.x * 32 + (threadIdx.x & 31);
  const float t = chunk_colsum(part, c, chunks, j, acc);
  if ((threadIdx.x >> 5) == 0 && j < c) out[j] = (unsigned short)f2bf(bf2f(out[j]) + t);
}

// gelu_bwd_partial: the backward of fc1 + exact GELU (linear_gelu.rs) over dg = dL/dgelu(h) and
//   the saved pre-activation h, both bf16 [rows, C]: dh = bf16(dg * (cdf(h) + h * pdf(h))), the
//   expression of LibTorch's GeluBackwardCUDAKernelImpl (approximate = "none") in fp32, and the
//   column partials of the rounded dh for fc1's bias gradient, chunked and ordered as
//   bias_partial's (so bias_finish gives the same sums as bias_partial over this dh).
__device__ __forceinline__ float gelu_bwd1(float dy, float x) {
  const float kBeta = (float)(0.70710678118654752440 * 1.12837916709551257390 * 0.5);
  const float kAlpha = (float)0.70710678118654752440;
  const float cdf = 0.5f * (1.f + erff(x * kAlpha));
  const float pdf = expf(-0.5f * x * x) * kBeta;
  return dy * (cdf + x * pdf);
}

extern "C" __global__ void __launch_bounds__(128)
gelu_bwd_partial(const uint4* __restrict__ dg, const uint4* __restrict__ h, uint4* __restrict__ dh,
                 float* __restrict__ part, int c8, long long rows, int rows_per) {
  __shared__ float acc[4][32][9];
  const int t = threadIdx.x & 31, w = threadIdx.x >> 5;
  const int q = blockIdx.x * 32 + t;
  const long long r0 = (long long)blockIdx.y * rows_per;
  const long long r1 = min(rows, r0 + rows_per);
  float s[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  if (q < c8) {
#pragma unroll 2
    for (long long r = r0 + w; r < r1; r += 4) {
      const long long i = r * c8 + q;
      const uint4 d = dg[i], x = h[i];
      const unsigned a[4] = {d.x, d.y, d.z, d.w}, b[4] = {x.x, x.y, x.z, x.w};
      unsigned o[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const unsigned l = f2bf(gelu_bwd1(lo(a[k]), lo(b[k])));
        const unsigned u = f2bf(gelu_bwd1(hi(a[k]), hi(b[k])));
        s[2 * k] += bf2f(l);
        s[2 * k + 1] += bf2f(u);
        o[k] = pack(l, u);
      }
      dh[i] = make_uint4(o[0], o[1], o[2], o[3]);
    }
  }
#pragma unroll
  for (int k = 0; k < 8; ++k) acc[w][t][k] = s[k];
  __syncthreads();
  if (w == 0 && q < c8) {
#pragma unroll
    for (int k = 0; k < 8; ++k) s[k] = ((acc[0][t][k] + acc[1][t][k]) + acc[2][t][k]) + acc[3][t][k];
    float4* p = reinterpret_cast<float4*>(part + (long long)blockIdx.y * c8 * 8) + 2 * q;
    p[0] = make_float4(s[0], s[1], s[2], s[3]);
    p[1] = make_float4(s[4], s[5], s[6], s[7]);
  }
}
