// Shared by the workspace's elementwise NVRTC kernels (prepended to their sources, see
// `cuda::kernel::BF16_CUH`): bf16 <-> fp32 (round to nearest even, NaN kept quiet, as LibTorch's
// casts), the two bf16 halves of a 32-bit word, the sum over a 128-thread block, and the column
// sums of chunk partials over a 256-thread block.

__device__ __forceinline__ float bf2f(unsigned v16) { return __uint_as_float(v16 << 16); }
__device__ __forceinline__ unsigned f2bf(float f) {
  unsigned u = __float_as_uint(f);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) return 0x7fc0u;
  u += 0x7fffu + ((u >> 16) & 1u);
  return u >> 16;
}
__device__ __forceinline__ float lo(unsigned v) { return __uint_as_float(v << 16); }
__device__ __forceinline__ float hi(unsigned v) { return __uint_as_float(v & 0xffff0000u); }
__device__ __forceinline__ unsigned pack(unsigned a, unsigned b) { return a | (b << 16); }

// Sum of `v` over the 128 threads of the block (every thread gets it).
__device__ __forceinline__ float block_sum(float v, float* part) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();  // `part` may still be read from the previous call
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
  __syncthreads();
  return part[0] + part[1] + part[2] + part[3];
}

// Column j's sum over the `chunks` rows of part [chunks, h] (fp32 partials of row chunks), by a
// 256-thread block of 32 columns (threadIdx.x & 31) x 8 chunk lanes (threadIdx.x >> 5): lane l
// sums chunks l, l + 8, .., then lane 0 adds the 8 lane sums in order (deterministic). Every
// thread of the block must call it (it synchronises); the result is valid in lane 0 when j < h.
__device__ __forceinline__ float chunk_colsum(const float* __restrict__ part, int h, int chunks,
                                              int j, float (*acc)[33]) {
  const int lane = threadIdx.x >> 5;
  float v = 0.f;
  if (j < h)
    for (int k = lane; k < chunks; k += 8) v += part[(long long)k * h + j];
  acc[lane][threadIdx.x & 31] = v;
  __syncthreads();
  float t = acc[0][threadIdx.x & 31];
#pragma unroll
  for (int l = 1; l < 8; ++l) t += acc[l][threadIdx.x & 31];
  return t;
}
