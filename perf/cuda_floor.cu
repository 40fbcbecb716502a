// cuda_floor.cu: the write-heavy ceilings of cuda_bench's section (e): kernels that do nothing
// but move bytes in the dequantization's proportions, one byte read for every two written (each
// input byte zero-extended to 16 bits), flat, in a few thread layouts (cuda_floor.h). What the
// best of them reaches is what device memory gives a kernel with that read/write mix. Beside
// them, an experimental FP8 -> BF16 rows kernel in the best layout, fast path only, to see what
// the library's kernel would gain from that layout.
#include "cuda_floor.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <algorithm>

namespace {

constexpr int THREADS = 256;

__device__ __forceinline__ uint4 widen_low(uint32_t a, uint32_t b) {
  return make_uint4(__byte_perm(a, 0, 0x4140), __byte_perm(a, 0, 0x4342), __byte_perm(b, 0, 0x4140),
                    __byte_perm(b, 0, 0x4342));
}

template <int UNROLL, bool STREAM>
__global__ void __launch_bounds__(THREADS) widen16_kernel(const uint4* in, uint4* out, uint64_t n) {
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
        const uint4 a = widen_low(x[u].x, x[u].y), b = widen_low(x[u].z, x[u].w);
        if constexpr (STREAM) {
          __stcs(&out[2 * (i + u * stride)], a);
          __stcs(&out[2 * (i + u * stride) + 1], b);
        } else {
          out[2 * (i + u * stride)] = a;
          out[2 * (i + u * stride) + 1] = b;
        }
      }
  }
}

// n: 8-byte input words; thread i reads word i and writes 16-byte output word i.
template <int UNROLL>
__global__ void __launch_bounds__(THREADS) widen8_kernel(const uint2* in, uint4* out, uint64_t n) {
  const uint64_t stride = uint64_t(gridDim.x) * THREADS;
  for (uint64_t i = uint64_t(blockIdx.x) * THREADS + threadIdx.x; i < n; i += stride * UNROLL) {
    uint2 x[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u)
      if (i + u * stride < n)
        x[u] = in[i + u * stride];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u)
      if (i + u * stride < n)
        out[i + u * stride] = widen_low(x[u].x, x[u].y);
  }
}

int sms() {
  int device = 0, n = 132;
  if (cudaGetDevice(&device) == cudaSuccess)
    cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device);
  return n;
}

unsigned grid(uint64_t n, int unroll) {
  return unsigned(std::clamp<uint64_t>((n + THREADS * unroll - 1) / (THREADS * unroll), 1,
                                       uint64_t(sms()) * 8));
}

// Two E4M3 codes times a scale, rounded to a BF16 pair (hardware conversions; no NaN handling).
__device__ __forceinline__ uint32_t deq2(uint32_t pair, float scale) {
  const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t(pair), __NV_E4M3);
  const float lo = __half2float(__ushort_as_half(h.x)), hi = __half2float(__ushort_as_half(h.y));
  const __nv_bfloat162 b = __floats2bfloat162_rn(__fmul_rn(lo, scale), __fmul_rn(hi, scale));
  return *reinterpret_cast<const uint32_t*>(&b);
}

template <int UNROLL>
__global__ void __launch_bounds__(THREADS)
    dequant_rows8_kernel(const uint2* in, const float* scales, uint4* out, uint32_t words_per_row,
                         uint32_t scale_cols, uint64_t n) {
  const uint64_t stride = uint64_t(gridDim.x) * THREADS;
  for (uint64_t i = uint64_t(blockIdx.x) * THREADS + threadIdx.x; i < n; i += stride * UNROLL) {
    uint2 x[UNROLL];
    float s[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const uint64_t w = i + u * stride;
      if (w < n) {
        x[u] = in[w];
        const uint32_t r = uint32_t(w / words_per_row), c8 = uint32_t(w % words_per_row);
        s[u] = scales[uint64_t(r >> 7) * scale_cols + (c8 >> 4)];
      }
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u)
      if (i + u * stride < n)
        out[i + u * stride] = make_uint4(deq2(x[u].x & 0xFFFF, s[u]), deq2(x[u].x >> 16, s[u]),
                                         deq2(x[u].y & 0xFFFF, s[u]), deq2(x[u].y >> 16, s[u]));
  }
}

} // namespace

cudaError_t launch_widen_floor(const void* in, void* out, uint64_t in_bytes, cudaStream_t stream,
                               FloorLayout layout) {
  switch (layout) {
  case FloorLayout::load16:
  case FloorLayout::load16_streaming: {
    const uint64_t n = in_bytes / 16;
    auto* k = layout == FloorLayout::load16 ? widen16_kernel<4, false> : widen16_kernel<4, true>;
    k<<<grid(n, 4), THREADS, 0, stream>>>(static_cast<const uint4*>(in), static_cast<uint4*>(out), n);
    break;
  }
  case FloorLayout::load8:
  case FloorLayout::load8_deep: {
    const uint64_t n = in_bytes / 8;
    if (layout == FloorLayout::load8)
      widen8_kernel<4><<<grid(n, 4), THREADS, 0, stream>>>(static_cast<const uint2*>(in),
                                                           static_cast<uint4*>(out), n);
    else
      widen8_kernel<8><<<grid(n, 8), THREADS, 0, stream>>>(static_cast<const uint2*>(in),
                                                           static_cast<uint4*>(out), n);
    break;
  }
  }
  return cudaGetLastError();
}

cudaError_t launch_dequant_rows8(const void* in, const float* scales, void* out, uint64_t R,
                                 uint64_t C, cudaStream_t stream) {
  const uint64_t n = R * C / 8;
  dequant_rows8_kernel<4><<<grid(n, 4), THREADS, 0, stream>>>(
      static_cast<const uint2*>(in), scales, static_cast<uint4*>(out), uint32_t(C / 8),
      uint32_t((C + 127) / 128), n);
  return cudaGetLastError();
}
