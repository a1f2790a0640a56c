// The bf16 weight gradients of one backward pass into the f32 flat gradient buffer (issue 21):
// g[i] += float(g16[i]), then g16[i] = 0 for the next backward. The same f32 addition autograd's
// mixed-dtype accumulation `grad += new_grad` does per tensor, as one pass over the whole range
// (that accumulation ran as ~250 unvectorised kernels per step). Each thread takes 4 elements, a
// block's 256 threads 1024 consecutive ones; any length and alignment.

extern "C" __global__ void __launch_bounds__(256)
add_bf16_grads(float* __restrict__ g, unsigned short* __restrict__ g16, long long n) {
  long long i = (long long)blockIdx.x * 1024 + threadIdx.x;
#pragma unroll
  for (int k = 0; k < 4; ++k, i += 256) {
    if (i < n) {
      g[i] += __uint_as_float((unsigned)g16[i] << 16);
      g16[i] = 0;
    }
  }
}
