// One AdamW step over the optimizer's flat f32 buffers (issue 21), with the gradient clipping
// before it: the ~10 LibTorch kernels of `adamw_update` (plus the clip's multiply) as one pass,
// reading p, g, m, v and writing p, m, v once (the clipped gradient is not written back).
//
// The arithmetic is those kernels' own, operation for operation, with the roundings pinned by
// intrinsics so that the compiler can neither contract nor reorder them:
//   g'  = g * clip                          (g.mul_(scale); skipped without a clip)
//   m   = lerp(m, g', w1), v = lerp(v, g'*g', w2)
//                                           (lerp_: w < 0.5 ? s + w * (e - s) : e - (e - s) * (1 - w),
//                                            as ATen's lerp, whose a + b * c nvcc contracts to an fma)
//   p   = p * decay                         (i < n_decay: p.mul_(1 - lr * wd))
//   den = sqrt(v * inv_bc2) + eps           (v * (1 / bc2), sqrt_, add_(eps))
//   p   = p + (m * step) / den              (addcdiv_ with m * (-lr / bc1))
// Scalars arrive as float (ATen casts a double Scalar to the f32 op math type the same way).
// Each thread takes 4 elements, a block's 256 threads 1024 consecutive ones.

__device__ __forceinline__ float lerp1(float s, float e, float w) {
  return fabsf(w) < 0.5f ? __fmaf_rn(w, __fsub_rn(e, s), s)
                         : __fmaf_rn(-__fsub_rn(e, s), __fsub_rn(1.0f, w), e);
}

extern "C" __global__ void __launch_bounds__(256)
adamw_flat(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
           float* __restrict__ v, long long n, long long n_decay, float clip, int has_clip,
           float w1, float w2, float decay, float inv_bc2, float eps, float step) {
  long long i = (long long)blockIdx.x * 1024 + threadIdx.x;
#pragma unroll
  for (int k = 0; k < 4; ++k, i += 256) {
    if (i < n) {
      float gi = g[i];
      if (has_clip) gi = __fmul_rn(gi, clip);
      const float mi = lerp1(m[i], gi, w1);
      const float vi = lerp1(v[i], __fmul_rn(gi, gi), w2);
      float pi = p[i];
      if (i < n_decay) pi = __fmul_rn(pi, decay);
      const float den = __fadd_rn(__fsqrt_rn(__fmul_rn(vi, inv_bc2)), eps);
      p[i] = __fadd_rn(pi, __fdiv_rn(__fmul_rn(mi, step), den));
      m[i] = mi;
      v[i] = vi;
    }
  }
}
