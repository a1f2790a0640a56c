// The squared l2 norms of the flat f32 gradient and parameter buffers for clipping and the
// weight-growth guard (issue 21): sum over i of double(x[i] * x[i]), each square rounded in fp32
// and summed in fp64, as LibTorch's `x.square().sum(kDouble)` does (which runs as an fp32
// square kernel, a copy of the whole buffer to fp64 and an fp64 reduction: three passes and
// 1.4 GB written per 173M-element buffer). Deterministic: a fixed grid of `SUMSQ_BLOCKS` blocks,
// each summing a grid-stride range in a fixed order, then one block summing the partials in a
// fixed order.
//
// sumsq_partial: part[blockIdx.x] = the block's sum; 4 elements per thread per step (16-byte
//   loads; x 16-byte aligned), the last n % 4 by block 0.
// sumsq_final: out[0] = sum of part[0 .. g) (one block of 256 threads).

__device__ __forceinline__ double block_sum_f64(double v, double* sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
#pragma unroll
  for (int o = 128; o > 0; o >>= 1) {
    if (threadIdx.x < o) sh[threadIdx.x] += sh[threadIdx.x + o];
    __syncthreads();
  }
  return sh[0];
}

extern "C" __global__ void __launch_bounds__(256)
sumsq_partial(const float4* __restrict__ x, long long n, double* __restrict__ part) {
  __shared__ double sh[256];
  const long long n4 = n / 4;
  const long long stride = (long long)gridDim.x * 256;
  double acc = 0.0;
  for (long long i = (long long)blockIdx.x * 256 + threadIdx.x; i < n4; i += stride) {
    const float4 v = x[i];
    acc += (double)(v.x * v.x);
    acc += (double)(v.y * v.y);
    acc += (double)(v.z * v.z);
    acc += (double)(v.w * v.w);
  }
  if (blockIdx.x == 0 && threadIdx.x < (n & 3)) {
    const float t = reinterpret_cast<const float*>(x)[n4 * 4 + threadIdx.x];
    acc += (double)(t * t);
  }
  const double s = block_sum_f64(acc, sh);
  if (threadIdx.x == 0) part[blockIdx.x] = s;
}

extern "C" __global__ void __launch_bounds__(256)
sumsq_final(const double* __restrict__ part, int g, double* __restrict__ out) {
  __shared__ double sh[256];
  double acc = 0.0;
  for (int i = threadIdx.x; i < g; i += 256) acc += part[i];
  const double s = block_sum_f64(acc, sh);
  if (threadIdx.x == 0) out[0] = s;
}
