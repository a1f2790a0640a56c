// y = W x (+ b) for one bf16 row on CUDA: the batch-1 decode products of the LLM (issue 16).
// cuBLAS runs these M = 1 products at 74 % of the H200's HBM bandwidth (docs/benchmarks/llm.md);
// a decode step is bound by reading the weights once, so the kernel does nothing but stream them:
// one warp per output row, 16-byte loads of 8 bf16 weights (streaming, evict-first) and of x
// (read-only cache: every warp reads the same x), fp32 FMA, a warp-shuffle sum, + bias in fp32,
// one round to bf16 (nearest even), as cuBLAS's fp32-accumulating epilogue does. Only the
// summation order differs from cuBLAS.
//
// w [n, k] bf16 row-major, x [k] bf16, bias [n] bf16 or null, y [n] bf16; k8 = k / 8 (k % 8 == 0,
// all pointers 16-byte aligned). Block: 256 threads = 8 rows.

__device__ __forceinline__ float bf_lo(unsigned v) { return __uint_as_float(v << 16); }
__device__ __forceinline__ float bf_hi(unsigned v) { return __uint_as_float(v & 0xffff0000u); }

__device__ __forceinline__ float dot8(uint4 a, uint4 b, float acc) {
  acc = fmaf(bf_lo(a.x), bf_lo(b.x), acc);
  acc = fmaf(bf_hi(a.x), bf_hi(b.x), acc);
  acc = fmaf(bf_lo(a.y), bf_lo(b.y), acc);
  acc = fmaf(bf_hi(a.y), bf_hi(b.y), acc);
  acc = fmaf(bf_lo(a.z), bf_lo(b.z), acc);
  acc = fmaf(bf_hi(a.z), bf_hi(b.z), acc);
  acc = fmaf(bf_lo(a.w), bf_lo(b.w), acc);
  acc = fmaf(bf_hi(a.w), bf_hi(b.w), acc);
  return acc;
}

__device__ __forceinline__ unsigned short to_bf16_rn(float f) {
  unsigned u = __float_as_uint(f);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) return 0x7fc0;  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return (unsigned short)(u >> 16);
}

extern "C" __global__ void __launch_bounds__(256)
gemv_bf16(const uint4* __restrict__ w, const uint4* __restrict__ x,
          const unsigned short* __restrict__ bias, unsigned short* __restrict__ y, int n, int k8) {
  const int row = (int)((blockIdx.x * blockDim.x + threadIdx.x) >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= n) return;
  const uint4* wr = w + (long long)row * k8;
  // Four independent partial sums: four 16-byte weight loads in flight per lane.
  float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
  int c = lane;
  for (; c + 96 < k8; c += 128) {
    const uint4 w0 = __ldcs(wr + c), w1 = __ldcs(wr + c + 32), w2 = __ldcs(wr + c + 64),
                w3 = __ldcs(wr + c + 96);
    a0 = dot8(w0, __ldg(x + c), a0);
    a1 = dot8(w1, __ldg(x + c + 32), a1);
    a2 = dot8(w2, __ldg(x + c + 64), a2);
    a3 = dot8(w3, __ldg(x + c + 96), a3);
  }
  for (; c < k8; c += 32) a0 = dot8(__ldcs(wr + c), __ldg(x + c), a0);
  float acc = (a0 + a1) + (a2 + a3);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (lane == 0) {
    if (bias) acc += __uint_as_float(((unsigned)bias[row]) << 16);
    y[row] = to_bf16_rn(acc);
  }
}
