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
