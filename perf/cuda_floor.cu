// cuda_floor.cu: the write-heavy ceiling of cuda_bench's section (e): a kernel that does nothing
// but move bytes in the dequantization's proportions, one byte read for every two written (each
// input byte zero-extended to 16 bits), flat, 16-byte loads and stores, four loads in flight per
// thread. What it reaches is what device memory gives a kernel with that read/write mix; the
// dequantization kernel cannot beat it.
#include "cuda_floor.h"

#include <algorithm>

namespace {

constexpr int THREADS = 256;
constexpr int UNROLL = 4;

__device__ __forceinline__ uint4 widen_low(uint32_t a, uint32_t b) {
  return make_uint4(__byte_perm(a, 0, 0x4140), __byte_perm(a, 0, 0x4342), __byte_perm(b, 0, 0x4140),
                    __byte_perm(b, 0, 0x4342));
}

__global__ void __launch_bounds__(THREADS) widen_kernel(const uint4* in, uint4* out, uint64_t n) {
  const uint64_t stride = uint64_t(gridDim.x) * THREADS;
  for (uint64_t i = uint64_t(blockIdx.x) * THREADS + threadIdx.x; i < n; i += stride * UNROLL) {
    uint4 x[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u)
      if (i + u * stride < n)
        x[u] = in[i + u * stride];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u)
      if (i + u * stride < n) {
        out[2 * (i + u * stride)] = widen_low(x[u].x, x[u].y);
        out[2 * (i + u * stride) + 1] = widen_low(x[u].z, x[u].w);
      }
  }
}

} // namespace

cudaError_t launch_widen_floor(const void* in, void* out, uint64_t in_bytes, cudaStream_t stream) {
  int device = 0, sms = 132;
  if (cudaGetDevice(&device) == cudaSuccess)
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  const uint64_t n = in_bytes / 16;
  const uint64_t blocks = std::clamp<uint64_t>((n + THREADS * UNROLL - 1) / (THREADS * UNROLL), 1,
                                               uint64_t(sms) * 8);
  widen_kernel<<<unsigned(blocks), THREADS, 0, stream>>>(static_cast<const uint4*>(in),
                                                         static_cast<uint4*>(out), n);
  return cudaGetLastError();
}
