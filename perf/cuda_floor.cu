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

__device__ __forceinline__ uint32_t word(const uint2& v, int i) { return i == 0 ? v.x : v.y; }
__device__ __forceinline__ uint32_t word(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

template <bool STREAM> __device__ __forceinline__ void put(uint4* p, uint4 v) {
  if constexpr (STREAM)
    __stcs(p, v);
  else
    *p = v;
}

// n input vectors of In (8 or 16 bytes); thread i reads vector i and writes its 16-byte output
// vectors (one or two, adjacent), UNROLL vectors in flight.
template <class In, int UNROLL, bool STREAM>
__global__ void __launch_bounds__(THREADS) widen_kernel(const In* in, uint4* out, uint64_t n) {
  constexpr int OUTS = sizeof(In) / 8;
  const uint64_t stride = uint64_t(gridDim.x) * THREADS;
  for (uint64_t i = uint64_t(blockIdx.x) * THREADS + threadIdx.x; i < n; i += stride * UNROLL) {
    In x[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u)
      if (i + u * stride < n)
        x[u] = in[i + u * stride];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u)
      if (i + u * stride < n)
#pragma unroll
        for (int o = 0; o < OUTS; ++o)
          put<STREAM>(&out[OUTS * (i + u * stride) + o],
                      widen_low(word(x[u], 2 * o), word(x[u], 2 * o + 1)));
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
  const auto* in16 = static_cast<const uint4*>(in);
  const auto* in8 = static_cast<const uint2*>(in);
  auto* o = static_cast<uint4*>(out);
  const uint64_t n16 = in_bytes / 16, n8 = in_bytes / 8;
  switch (layout) {
  case FloorLayout::load16:
    widen_kernel<uint4, 4, false><<<grid(n16, 4), THREADS, 0, stream>>>(in16, o, n16);
    break;
  case FloorLayout::load16_streaming:
    widen_kernel<uint4, 4, true><<<grid(n16, 4), THREADS, 0, stream>>>(in16, o, n16);
    break;
  case FloorLayout::load8:
    widen_kernel<uint2, 4, false><<<grid(n8, 4), THREADS, 0, stream>>>(in8, o, n8);
    break;
  case FloorLayout::load8_deep:
    widen_kernel<uint2, 8, false><<<grid(n8, 8), THREADS, 0, stream>>>(in8, o, n8);
    break;
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
