// dequant_cuda.cu: FP8 block dequantization (dequant.h) on the GPU, with the bits of
// dequant_cpu().
//
// Every element is numerics.h's arithmetic, the functions the CPU kernel calls: the weight is
// widened exactly (FP8 through a 256-entry table built in shared memory from f8_e4m3_to_f32 /
// f8_e5m2_to_f32, 16- and 32-bit types by their bit patterns), multiplied by its block's scale
// with mul_f32 (one IEEE multiply, canonical NaN with the product's sign) and rounded once to the
// destination (f32_to_bf16_rne, f32_to_f16_rne, f32_canonical_bits). Nothing here depends on
// -ftz or on fused multiply-adds: there is no add.
//
// Transposed calls (a stacked expert piece: out[k][r] = deq(W[r][begin + k])) go through a
// 64 x 64 tile in shared memory: the block reads 64 rows of 64 columns with 16-byte loads, keeps
// the products as floats in a padded tile (no bank conflicts on the way out), then writes 64
// output rows of 64 elements with 16-byte stores. A tile lies inside one 128 x 128 scale block
// (the region starts on a block boundary and tiles on multiples of 64), so a block reads one
// scale. Plain calls (rows of W) are elementwise: one thread per 16 bytes of input.
// Rows that are not 16-byte aligned (odd widths, pitches or pointers) take element-wise loads and
// stores; the arithmetic is the same.
#include "dequant_cuda.h"
#include "numerics.h"

#include <algorithm>
#include <cstdint>

namespace shardshift {

namespace {

using namespace numerics;

constexpr int TILE = 64;      ///< rows and columns of W per transposed tile
constexpr int THREADS = 256;

template <DType T> struct In;
template <> struct In<DType::F8_E4M3> { using type = uint8_t; };
template <> struct In<DType::F8_E5M2> { using type = uint8_t; };
template <> struct In<DType::BF16> { using type = uint16_t; };
template <> struct In<DType::F16> { using type = uint16_t; };
template <> struct In<DType::F32> { using type = uint32_t; };

template <DType T> struct Out;
template <> struct Out<DType::BF16> { using type = uint16_t; };
template <> struct Out<DType::F16> { using type = uint16_t; };
template <> struct Out<DType::F32> { using type = uint32_t; };

constexpr bool is_fp8(DType t) {
  return t == DType::F8_E4M3 || t == DType::F8_E5M2;
}

__device__ __forceinline__ int count_up_to(int most, uint64_t left) {
  return left < uint64_t(most) ? int(left) : most;
}

struct Geometry {
  const std::byte* src;
  const std::byte* scales;
  std::byte* dst;
  uint64_t R, C, begin, count, pitch, block, scale_cols;
  DType scale_dtype;
  bool vector_loads;  ///< src and every row of W start on 16 bytes
  bool vector_stores; ///< dst and every output row start on 16 bytes
};

/// The FP8 decode table of `S` in shared memory (filled by the block's threads).
template <DType S> __device__ void fill_table(float* table) {
  for (int c = threadIdx.x; c < 256; c += blockDim.x)
    table[c] = S == DType::F8_E4M3 ? f8_e4m3_to_f32(uint8_t(c)) : f8_e5m2_to_f32(uint8_t(c));
}

template <DType S>
__device__ __forceinline__ float widen(typename In<S>::type x, const float* table) {
  if constexpr (is_fp8(S))
    return table[x];
  else if constexpr (S == DType::BF16)
    return bf16_to_f32(x);
  else if constexpr (S == DType::F16)
    return f16_to_f32(x);
  else
    return f32_from_bits(x);
}

template <DType D> __device__ __forceinline__ typename Out<D>::type narrow(float v) {
  if constexpr (D == DType::BF16)
    return f32_to_bf16_rne(v);
  else if constexpr (D == DType::F16)
    return f32_to_f16_rne(v);
  else
    return f32_canonical_bits(f32_bits(v));
}

__device__ __forceinline__ float load_scale(const Geometry& g, uint64_t br, uint64_t bc) {
  const std::byte* p = g.scales;
  const uint64_t i = br * g.scale_cols + bc;
  if (g.scale_dtype == DType::F32)
    return f32_from_bits(reinterpret_cast<const uint32_t*>(p)[i]);
  const uint16_t h = reinterpret_cast<const uint16_t*>(p)[i];
  return g.scale_dtype == DType::BF16 ? bf16_to_f32(h) : f16_to_f32(h);
}

/// 16 bytes as N elements of T.
template <class T> union Vec {
  uint4 v;
  T e[16 / sizeof(T)];
};

/// Stores n (<= 16 / sizeof(T)) elements at p: one 16-byte store when `vector` and n is whole.
template <class T>
__device__ __forceinline__ void store(T* p, const Vec<T>& v, int n, bool vector) {
  constexpr int N = 16 / sizeof(T);
  if (vector && n == N) {
    *reinterpret_cast<uint4*>(p) = v.v;
    return;
  }
  for (int e = 0; e < n; ++e)
    p[e] = v.e[e];
}

// out[k][r] = deq(W[r][begin + k]); grid.x: tiles of columns of W from the tile holding begin,
// grid.y: tiles of rows of W.
template <DType S, DType D> __global__ void __launch_bounds__(THREADS) transposed_kernel(Geometry g) {
  using I = typename In<S>::type;
  using O = typename Out<D>::type;
  constexpr int V = 16 / sizeof(I); // input elements per 16-byte load
  constexpr int W = 16 / sizeof(O); // output elements per 16-byte store
  __shared__ float table[is_fp8(S) ? 256 : 1];
  __shared__ float tile[TILE][TILE + 1]; // [column of W][row of W]
  if constexpr (is_fp8(S)) {
    fill_table<S>(table);
    __syncthreads();
  }
  const uint64_t end = g.begin + g.count;
  const uint64_t j0 = g.begin / TILE * TILE + uint64_t(blockIdx.x) * TILE;
  const uint64_t r0 = uint64_t(blockIdx.y) * TILE;
  const float scale = load_scale(g, r0 / g.block, j0 / g.block);
  const I* src = reinterpret_cast<const I*>(g.src);

  for (int v = threadIdx.x; v < TILE * (TILE / V); v += THREADS) {
    const int row = v / (TILE / V), seg = v % (TILE / V);
    const uint64_t r = r0 + row, c = j0 + uint64_t(seg) * V;
    if (r >= g.R || c >= g.C)
      continue;
    const I* p = src + r * g.C + c;
    Vec<I> x;
    const int n = count_up_to(V, g.C - c);
    if (g.vector_loads && n == V)
      x.v = *reinterpret_cast<const uint4*>(p);
    else
      for (int e = 0; e < n; ++e)
        x.e[e] = p[e];
    for (int e = 0; e < n; ++e)
      tile[seg * V + e][row] = mul_f32(widen<S>(x.e[e], table), scale);
  }
  __syncthreads();

  O* dst = reinterpret_cast<O*>(g.dst);
  for (int v = threadIdx.x; v < TILE * (TILE / W); v += THREADS) {
    const int col = v / (TILE / W), seg = v % (TILE / W);
    const uint64_t j = j0 + col, r = r0 + uint64_t(seg) * W;
    if (j < g.begin || j >= end || r >= g.R)
      continue;
    const int n = count_up_to(W, g.R - r);
    Vec<O> y;
    for (int e = 0; e < n; ++e)
      y.e[e] = narrow<D>(tile[col][seg * W + e]);
    store(dst + (j - g.begin) * g.pitch + r, y, n, g.vector_stores);
  }
}

// out[k][c] = deq(W[begin + k][c]); one thread per V input elements, grid-stride.
template <DType S, DType D> __global__ void __launch_bounds__(THREADS) rows_kernel(Geometry g) {
  using I = typename In<S>::type;
  using O = typename Out<D>::type;
  constexpr int V = 16 / sizeof(I);
  constexpr int W = 16 / sizeof(O);
  __shared__ float table[is_fp8(S) ? 256 : 1];
  if constexpr (is_fp8(S)) {
    fill_table<S>(table);
    __syncthreads();
  }
  const I* src = reinterpret_cast<const I*>(g.src);
  O* dst = reinterpret_cast<O*>(g.dst);
  const uint64_t per_row = (g.C + V - 1) / V;
  const uint64_t total = g.count * per_row;
  for (uint64_t i = uint64_t(blockIdx.x) * THREADS + threadIdx.x; i < total;
       i += uint64_t(gridDim.x) * THREADS) {
    const uint64_t k = i / per_row, c = (i % per_row) * V, r = g.begin + k;
    const int n = count_up_to(V, g.C - c);
    const I* p = src + r * g.C + c;
    Vec<I> x;
    if (g.vector_loads && n == V)
      x.v = *reinterpret_cast<const uint4*>(p);
    else
      for (int e = 0; e < n; ++e)
        x.e[e] = p[e];
    // V elements never cross a block: c is a multiple of V, the block a multiple of 64.
    const float scale = load_scale(g, r / g.block, c / g.block);
    O* q = dst + k * g.pitch + c;
    // V inputs are V / W output vectors (V >= W) or a part of one (V < W: element stores).
    if constexpr (V >= W) {
      for (int o = 0; o < V / W; ++o) {
        const int m = min(W, n - o * W);
        if (m <= 0)
          break;
        Vec<O> y;
        for (int e = 0; e < m; ++e)
          y.e[e] = narrow<D>(mul_f32(widen<S>(x.e[o * W + e], table), scale));
        store(q + o * W, y, m, g.vector_stores);
      }
    } else {
      for (int e = 0; e < n; ++e)
        q[e] = narrow<D>(mul_f32(widen<S>(x.e[e], table), scale));
    }
  }
}

bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

template <DType S, DType D> cudaError_t launch(const DequantArgs& a, cudaStream_t stream) {
  const uint64_t in_es = dtype_bits(S) / 8, out_es = dtype_bits(D) / 8;
  Geometry g{a.src,   a.scales, a.dst,   a.R,
             a.C,     a.begin,  a.count, a.dst_pitch ? a.dst_pitch : (a.transpose ? a.R : a.C),
             a.block, scale_blocks(a.C, a.block), a.scale_dtype, false, false};
  g.vector_loads = aligned16(a.src) && (a.C * in_es) % 16 == 0;
  g.vector_stores = aligned16(a.dst) && (g.pitch * out_es) % 16 == 0;
  if (a.transpose) {
    const uint64_t j_tiles = (a.begin + a.count + TILE - 1) / TILE - a.begin / TILE;
    const uint64_t r_tiles = (a.R + TILE - 1) / TILE;
    if (r_tiles > 65535)
      return cudaErrorInvalidConfiguration;
    transposed_kernel<S, D><<<dim3(unsigned(j_tiles), unsigned(r_tiles)), THREADS, 0, stream>>>(g);
  } else {
    const uint64_t V = 16 / in_es;
    const uint64_t vectors = a.count * ((a.C + V - 1) / V);
    const uint64_t blocks = std::min<uint64_t>((vectors + THREADS - 1) / THREADS, 65535);
    rows_kernel<S, D><<<unsigned(blocks), THREADS, 0, stream>>>(g);
  }
  return cudaGetLastError();
}

template <DType S> cudaError_t dispatch_dst(const DequantArgs& a, cudaStream_t stream) {
  switch (a.dst_dtype) {
  case DType::BF16:
    return launch<S, DType::BF16>(a, stream);
  case DType::F16:
    return launch<S, DType::F16>(a, stream);
  default:
    return launch<S, DType::F32>(a, stream);
  }
}

} // namespace

cudaError_t launch_dequant(const DequantArgs& a, cudaStream_t stream) {
  if (a.count == 0 || a.R == 0 || a.C == 0)
    return cudaSuccess;
  if (a.block % TILE != 0)
    return cudaErrorInvalidValue;
  switch (a.src_dtype) {
  case DType::F8_E4M3:
    return dispatch_dst<DType::F8_E4M3>(a, stream);
  case DType::F8_E5M2:
    return dispatch_dst<DType::F8_E5M2>(a, stream);
  case DType::BF16:
    return dispatch_dst<DType::BF16>(a, stream);
  case DType::F16:
    return dispatch_dst<DType::F16>(a, stream);
  default:
    return dispatch_dst<DType::F32>(a, stream);
  }
}

} // namespace shardshift
