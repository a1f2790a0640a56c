// Fused elementwise steps of the decoder for bf16 on CUDA (issue 16): each replaces two LibTorch
// kernels and their round trip through memory, with the same roundings.
//
// add_rmsnorm_bf16: per row, xo = bf16(x + d) (the residual add) and y = bf16(xo * rstd * w)
//   with rstd = 1 / sqrt(mean(xo^2) + eps) over the row in fp32 (LibTorch's rms_norm on xo: fp32
//   statistics, one rounding of the product with w). One block of 256 threads per row; h % 8 == 0,
//   16-byte aligned rows.
// silu_mul_bf16: out = bf16(bf16(silu(g)) * u) for gu = [g | u] per row (LibTorch's silu then mul:
//   the same two roundings); f % 8 == 0.

typedef unsigned short bf16_t;

// bf2f, f2bf, lo, hi, pack: semhitok-nn's bf16.cuh (prepended).

extern "C" __global__ void __launch_bounds__(256)
add_rmsnorm_bf16(const uint4* __restrict__ x, const uint4* __restrict__ d,
                 const uint4* __restrict__ w, uint4* __restrict__ xo, uint4* __restrict__ y,
                 int h8, float eps) {
  __shared__ float part[8];
  const long long row = blockIdx.x;
  const uint4* xr = x + row * h8;
  const uint4* dr = d + row * h8;
  uint4* xor_ = xo + row * h8;
  uint4* yr = y + row * h8;
  float ss = 0.f;
  for (int c = threadIdx.x; c < h8; c += 256) {
    const uint4 a = xr[c], b = dr[c];
    const unsigned av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
    unsigned ov[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const unsigned s0 = f2bf(lo(av[j]) + lo(bv[j])), s1 = f2bf(hi(av[j]) + hi(bv[j]));
      const float f0 = bf2f(s0), f1 = bf2f(s1);
      ss = fmaf(f0, f0, ss);
      ss = fmaf(f1, f1, ss);
      ov[j] = pack(s0, s1);
    }
    xor_[c] = make_uint4(ov[0], ov[1], ov[2], ov[3]);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = ss;
  __syncthreads();
  float tot = 0.f;
#pragma unroll
  for (int i = 0; i < 8; ++i) tot += part[i];
  const float rstd = 1.0f / sqrtf(tot / (float)(h8 * 8) + eps);
  for (int c = threadIdx.x; c < h8; c += 256) {
    const uint4 a = xor_[c], g = w[c];
    const unsigned av[4] = {a.x, a.y, a.z, a.w}, gv[4] = {g.x, g.y, g.z, g.w};
    unsigned ov[4];
#pragma unroll
    for (int j = 0; j < 4; ++j)
      ov[j] = pack(f2bf(lo(av[j]) * rstd * lo(gv[j])), f2bf(hi(av[j]) * rstd * hi(gv[j])));
    yr[c] = make_uint4(ov[0], ov[1], ov[2], ov[3]);
  }
}

__device__ __forceinline__ unsigned silu_mul1(float g, float u) {
  const unsigned s = f2bf(g / (1.0f + expf(-g)));
  return f2bf(bf2f(s) * u);
}

extern "C" __global__ void __launch_bounds__(256)
silu_mul_bf16(const uint4* __restrict__ gu, uint4* __restrict__ out, int f8, long long total8) {
  const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= total8) return;
  const long long row = e / f8, c = e % f8;
  const uint4 g = gu[row * 2 * f8 + c], u = gu[row * 2 * f8 + f8 + c];
  const unsigned gv[4] = {g.x, g.y, g.z, g.w}, uv[4] = {u.x, u.y, u.z, u.w};
  unsigned ov[4];
#pragma unroll
  for (int j = 0; j < 4; ++j)
    ov[j] = pack(silu_mul1(lo(gv[j]), lo(uv[j])), silu_mul1(hi(gv[j]), hi(uv[j])));
  out[e] = make_uint4(ov[0], ov[1], ov[2], ov[3]);
}
