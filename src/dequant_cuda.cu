// dequant_cuda.cu: FP8 block dequantization (dequant.h) on the GPU, with the bits of
// dequant_cpu().
//
// Every element gets the arithmetic of numerics.h, which the CPU kernel uses: the weight is
// widened exactly (FP8 pairs through the hardware FP8 -> F16 conversion, exact since F16 holds
// every FP8 value, then F16 -> F32; 16- and 32-bit types by their bit patterns), multiplied by
// its block's scale with mul_f32 (one IEEE multiply, canonical NaN with the product's sign) and
// rounded once to the destination (f32_to_bf16_rne, f32_to_f16_rne, f32_canonical_bits). Two
// shortcuts give the same bits: where no product of a vector can be NaN (a finite non-zero scale
// and no NaN code), the plain IEEE multiply is mul_f32; and 16-bit results are rounded in pairs
// by the hardware's round-to-nearest-even conversion, which agrees with those functions on every
// non-NaN value, NaN lanes being set to the canonical NaN by hand. Nothing here depends on -ftz
// or on fused multiply-adds: there is no add.
//
// Transposed calls (a stacked expert piece: out[k][r] = deq(W[r][begin + k])) go through a tile
// in shared memory, each block's next tile's loads in flight while the current one is written.
// FP8 into 16-bit results with shapes in multiples of 8 (every real checkpoint) take
// transposed8_kernel: 128 x 64 tiles of packed 16-bit pairs, 8-byte loads, whole-line 16-byte
// stores, and a persistent grid over every piece of a batch. Other calls take transposed_kernel:
// 64 x 64 tiles of floats, 16-byte loads, each block walking a strip of tiles down the rows; such
// a tile lies inside one scale block (blocks are powers of two >= 64), so it reads one scale. Plain calls (rows of W) are elementwise: FP8 into 16-bit
// results in the 8-byte layout (rows8_kernel), the rest with each block walking output rows,
// each thread 16 input bytes at a time, two loads in flight.
// Rows that are not 16-byte aligned (odd widths, pitches or pointers) take element-wise loads and
// stores; the arithmetic is the same.
#include "dequant_cuda.h"
#include "numerics.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <bit>
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
  uint64_t R, C, begin, count, pitch, scale_cols;
  int block_shift;    ///< log2 of the block (a power of two >= 64)
  DType scale_dtype;
  bool vector_loads;  ///< src and every row of W start on 16 bytes
  bool vector_stores; ///< dst and every output row start on 16 bytes
  uint32_t r_tiles_per_block; ///< transposed: row tiles one block walks through
};

/// Two FP8 codes (the low and high byte of `pair`) as floats, exactly: through F16, which holds
/// every E4M3 and E5M2 value (hardware conversion from sm_89; E5M2 is the top byte of an F16),
/// then F16 -> F32, exact without -ftz. A NaN code gives a NaN with the code's sign, as
/// f8_e4m3_to_f32 / f8_e5m2_to_f32 do (its payload does not matter: mul_f32 canonicalizes).
template <DType S> __device__ __forceinline__ void decode_fp8x2(uint32_t pair, float& lo, float& hi) {
  __half2_raw h;
  if constexpr (S == DType::F8_E4M3) {
    h = __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t(pair), __NV_E4M3);
  } else {
    h.x = uint16_t((pair & 0xFFu) << 8);
    h.y = uint16_t(pair & 0xFF00u);
  }
  lo = __uint_as_float(__float_as_uint(__half2float(__ushort_as_half(h.x))) | ((pair & 0x80u) << 24));
  hi = __uint_as_float(__float_as_uint(__half2float(__ushort_as_half(h.y))) | ((pair & 0x8000u) << 16));
}

/// A 16- or 32-bit weight as a float, exactly (numerics.h).
template <DType S> __device__ __forceinline__ float widen(typename In<S>::type x) {
  if constexpr (S == DType::BF16)
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

/// 16 bytes as N = 16 / sizeof(T) elements of T, in four 32-bit words. Elements are taken
/// and put with shifts on constant indices (loops below are unrolled), so the vector stays in
/// registers: a union of uint4 and T[N] indexed element by element would go through local memory.
template <class T> struct Vec {
  static constexpr int N = 16 / sizeof(T);
  uint4 v;

  __device__ __forceinline__ uint32_t word(int i) const {
    return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
  }
  __device__ __forceinline__ T get(int e) const {
    constexpr int PER_WORD = 4 / int(sizeof(T) < 4 ? sizeof(T) : 4);
    const uint32_t w = word(e / PER_WORD);
    if constexpr (sizeof(T) == 4)
      return T(w);
    else
      return T(w >> (e % PER_WORD * 8 * sizeof(T)));
  }
  /// Elements 2k and 2k + 1 of a byte vector, as the low 16 bits.
  __device__ __forceinline__ uint32_t pair(int k) const {
    return (word(k / 2) >> (k % 2 * 16)) & 0xFFFFu;
  }
  __device__ __forceinline__ void put(int e, T x) { // REQUIRES: element e was zero
    constexpr int PER_WORD = 4 / int(sizeof(T) < 4 ? sizeof(T) : 4);
    const uint32_t bits = sizeof(T) == 4 ? uint32_t(x) : uint32_t(x) << (e % PER_WORD * 8 * sizeof(T));
    switch (e / PER_WORD) {
    case 0: v.x |= bits; break;
    case 1: v.y |= bits; break;
    case 2: v.z |= bits; break;
    default: v.w |= bits; break;
    }
  }
};

/// Loads n (<= N) elements from p: one 16-byte load when `vector` and n is whole.
template <class T>
__device__ __forceinline__ Vec<T> load(const T* p, int n, bool vector) {
  Vec<T> x;
  x.v = make_uint4(0, 0, 0, 0);
  if (vector && n == Vec<T>::N) {
    x.v = *reinterpret_cast<const uint4*>(p);
  } else {
#pragma unroll
    for (int e = 0; e < Vec<T>::N; ++e)
      if (e < n)
        x.put(e, p[e]);
  }
  return x;
}

/// Stores n (<= N) elements at p: one 16-byte store when `vector` and n is whole.
template <class T>
__device__ __forceinline__ void store(T* p, const Vec<T>& y, int n, bool vector) {
  if (vector && n == Vec<T>::N) {
    *reinterpret_cast<uint4*>(p) = y.v;
    return;
  }
#pragma unroll
  for (int e = 0; e < Vec<T>::N; ++e)
    if (e < n)
      p[e] = y.get(e);
}

/// Non-zero where a byte of `w` (four FP8 codes) is a NaN code.
template <DType S> __device__ __forceinline__ uint32_t nan_codes(uint32_t w) {
  return S == DType::F8_E4M3 ? __vcmpeq4(w & 0x7F7F7F7Fu, 0x7F7F7F7Fu)
                             : __vcmpgeu4(w & 0x7F7F7F7Fu, 0x7D7D7D7Du);
}

/// A scale no FP8 value can make a NaN product with: finite and not zero.
__device__ __forceinline__ bool usable_scale(float scale) {
  return isfinite(scale) && scale != 0.0f;
}

/// Whether no product of `x` and `scale` can be NaN: the scale is finite and not zero, and no
/// code of `x` is a NaN (E4M3 S.1111.111; E5M2 S.11111.xx with xx != 0). Then the plain IEEE
/// multiply gives mul_f32's bits without its NaN check.
template <DType S>
__device__ __forceinline__ bool no_nan_products(const Vec<typename In<S>::type>& x, float scale) {
  if constexpr (S == DType::F8_E4M3 || S == DType::F8_E5M2)
    return usable_scale(scale) &&
           (nan_codes<S>(x.word(0)) | nan_codes<S>(x.word(1)) | nan_codes<S>(x.word(2)) |
            nan_codes<S>(x.word(3))) == 0;
  else
    return false; // 16- and 32-bit weights: the checked multiply
}

/// The elements of `x` as floats times `scale` (mul_f32: canonical NaN with the product's sign).
template <DType S>
__device__ __forceinline__ void dequantize(const Vec<typename In<S>::type>& x, float scale,
                                           float* out) {
  constexpr int N = Vec<typename In<S>::type>::N;
  if constexpr (is_fp8(S)) {
    if (no_nan_products<S>(x, scale)) {
#pragma unroll
      for (int k = 0; k < N / 2; ++k) {
        float lo, hi;
        decode_fp8x2<S>(x.pair(k), lo, hi);
        out[2 * k] = __fmul_rn(lo, scale);
        out[2 * k + 1] = __fmul_rn(hi, scale);
      }
      return;
    }
#pragma unroll
    for (int k = 0; k < N / 2; ++k) {
      float lo, hi;
      decode_fp8x2<S>(x.pair(k), lo, hi);
      out[2 * k] = mul_f32(lo, scale);
      out[2 * k + 1] = mul_f32(hi, scale);
    }
  } else {
#pragma unroll
    for (int e = 0; e < N; ++e)
      out[e] = mul_f32(widen<S>(x.get(e)), scale);
  }
}

/// Two non-NaN floats rounded to D (16-bit) by the hardware's round-to-nearest-even pair
/// conversion and packed, low first: narrow2() for values that cannot be NaN.
template <DType D> __device__ __forceinline__ uint32_t round2(float a, float b) {
  if constexpr (D == DType::BF16) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<const uint32_t*>(&h);
  } else {
    const __half2 h = __floats2half2_rn(a, b);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
}

/// Two floats rounded to D (16-bit) and packed, low first: the hardware's round-to-nearest-even
/// pair conversion, which matches f32_to_bf16_rne / f32_to_f16_rne for every non-NaN value
/// (subnormals kept, overflow to infinity), and NaN lanes set to the canonical NaN with the
/// value's sign as those functions do.
template <DType D> __device__ __forceinline__ uint32_t narrow2(float a, float b) {
  const uint32_t canonical = D == DType::BF16 ? BF16_CANONICAL_NAN : F16_CANONICAL_NAN;
  uint32_t bits = round2<D>(a, b);
  if (isnan(a))
    bits = (bits & 0xFFFF0000u) | ((__float_as_uint(a) >> 16) & 0x8000u) | canonical;
  if (isnan(b))
    bits = (bits & 0x0000FFFFu) | (((__float_as_uint(b) >> 16) & 0x8000u) | canonical) << 16;
  return bits;
}

/// W results of D from out[0, W) into one vector: pairs through narrow2 for 16-bit types.
template <DType D> __device__ __forceinline__ Vec<typename Out<D>::type> pack(const float* v) {
  using O = typename Out<D>::type;
  constexpr int W = Vec<O>::N;
  Vec<O> y;
  if constexpr (sizeof(O) == 2) {
    y.v = make_uint4(narrow2<D>(v[0], v[1]), narrow2<D>(v[2], v[3]), narrow2<D>(v[4], v[5]),
                     narrow2<D>(v[6], v[7]));
  } else {
    y.v = make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int e = 0; e < W; ++e)
      y.put(e, narrow<D>(v[e]));
  }
  return y;
}

// out[k][r] = deq(W[r][begin + k]). grid.x: tiles of 64 columns of W from the tile holding
// begin; grid.y: strips of r_tiles_per_block tiles of 64 rows, which the block walks down, the
// next tile's load in flight while the current one is written.
template <DType S, DType D> __global__ void __launch_bounds__(THREADS) transposed_kernel(Geometry g) {
  using I = typename In<S>::type;
  using O = typename Out<D>::type;
  constexpr int V = 16 / sizeof(I);     // input elements per 16-byte load
  constexpr int W = 16 / sizeof(O);     // output elements per 16-byte store
  constexpr int LOADS = TILE * TILE / V / THREADS;  // per thread per tile (1, 2 or 4)
  constexpr int STORES = TILE * TILE / W / THREADS; // per thread per tile (2 or 4)
  __shared__ float tile[TILE][TILE + 1]; // [column of W][row of W]
  const uint64_t end = g.begin + g.count;
  const uint64_t j0 = (g.begin >> 6 << 6) + uint64_t(blockIdx.x) * TILE;
  const I* src = reinterpret_cast<const I*>(g.src);
  O* dst = reinterpret_cast<O*>(g.dst);
  // This thread's place in the load and store patterns (the same for every tile).
  int lrow[LOADS], lcol[LOADS], ln[LOADS];
#pragma unroll
  for (int l = 0; l < LOADS; ++l) {
    const int v = threadIdx.x + l * THREADS;
    lrow[l] = v / (TILE / V);
    lcol[l] = v % (TILE / V) * V;
    ln[l] = j0 + lcol[l] >= g.C ? 0 : count_up_to(V, g.C - j0 - lcol[l]);
  }
  const uint64_t r_first = uint64_t(blockIdx.y) * g.r_tiles_per_block * TILE;
  const uint64_t r_last = min(g.R, r_first + uint64_t(g.r_tiles_per_block) * TILE);
  Vec<I> x[LOADS];
  auto fetch = [&](uint64_t r0) {
#pragma unroll
    for (int l = 0; l < LOADS; ++l) {
      const uint64_t r = r0 + lrow[l];
      const int n = r < g.R ? ln[l] : 0;
      x[l] = load(src + r * g.C + j0 + lcol[l], n, g.vector_loads);
    }
  };
  fetch(r_first);
  for (uint64_t r0 = r_first; r0 < r_last; r0 += TILE) {
    const float scale = load_scale(g, r0 >> g.block_shift, j0 >> g.block_shift);
#pragma unroll
    for (int l = 0; l < LOADS; ++l) {
      float v[V];
      dequantize<S>(x[l], scale, v);
#pragma unroll
      for (int e = 0; e < V; ++e)
        tile[lcol[l] + e][lrow[l]] = v[e];
    }
    __syncthreads();
    if (r0 + TILE < r_last)
      fetch(r0 + TILE); // in flight while this tile is written
#pragma unroll
    for (int t = 0; t < STORES; ++t) {
      const int v = threadIdx.x + t * THREADS;
      const int col = v / (TILE / W), seg = v % (TILE / W) * W;
      const uint64_t j = j0 + col, r = r0 + seg;
      if (j < g.begin || j >= end || r >= g.R)
        continue;
      const int n = count_up_to(W, g.R - r);
      float vals[W];
#pragma unroll
      for (int e = 0; e < W; ++e)
        vals[e] = tile[col][seg + e];
      store(dst + (j - g.begin) * g.pitch + r, pack<D>(vals), n, g.vector_stores);
    }
    __syncthreads();
  }
}

// out[k][c] = deq(W[begin + k][c]). Each block walks output rows (grid-stride); its threads
// cover a row 16 input bytes each, two loads in flight.
template <DType S, DType D> __global__ void __launch_bounds__(THREADS) rows_kernel(Geometry g) {
  using I = typename In<S>::type;
  using O = typename Out<D>::type;
  constexpr int V = 16 / sizeof(I);
  constexpr int W = 16 / sizeof(O);
  const I* src = reinterpret_cast<const I*>(g.src);
  O* dst = reinterpret_cast<O*>(g.dst);
  const uint64_t per_row = (g.C + V - 1) / V; // vectors in a row
  for (uint64_t k = blockIdx.x; k < g.count; k += gridDim.x) {
    const uint64_t r = g.begin + k;
    const I* row = src + r * g.C;
    O* out = dst + k * g.pitch;
    const uint64_t br = r >> g.block_shift;
    for (uint64_t i = threadIdx.x; i < per_row; i += 2 * THREADS) {
      Vec<I> x[2];
      int n[2];
#pragma unroll
      for (int u = 0; u < 2; ++u) {
        const uint64_t c = (i + u * THREADS) * V;
        n[u] = c < g.C ? count_up_to(V, g.C - c) : 0;
        x[u] = load(row + c, n[u], g.vector_loads);
      }
#pragma unroll
      for (int u = 0; u < 2; ++u) {
        if (n[u] == 0)
          continue;
        const uint64_t c = (i + u * THREADS) * V;
        // V elements never cross a block: c is a multiple of V, the block a multiple of 64.
        const float scale = load_scale(g, br, c >> g.block_shift);
        float v[V];
        dequantize<S>(x[u], scale, v);
        if constexpr (V >= W) {
#pragma unroll
          for (int o = 0; o < V / W; ++o) {
            const int m = min(W, n[u] - o * W);
            if (m <= 0)
              break;
            store(out + c + o * W, pack<D>(v + o * W), m, g.vector_stores);
          }
        } else {
#pragma unroll
          for (int e = 0; e < V; ++e)
            if (e < n[u])
              out[c + e] = narrow<D>(v[e]);
        }
      }
    }
  }
}

// --- FP8 -> 16-bit in the 8-byte layout -----------------------------------------------------
// The kernels above give each thread 16 input bytes, so each thread writes 32 output bytes with
// two 16-byte stores, and each store instruction of a warp covers every other 16 bytes of its
// span: half of every 32-byte sector. Device memory takes such writes at about 0.58 of a copy's
// rate (cuda_bench's floors), whatever the arithmetic. With 8 input bytes per 16-byte store,
// each store instruction covers whole sectors (0.83 of a copy). For FP8 weights and 16-bit
// results (the DeepSeek-V3 case) the kernels below use that layout, by rows and transposed, when
// the shape and pointers allow; the arithmetic is dequantize()'s and narrow2()'s, so the bits
// are the same. (A transposed kernel with each thread an 8 x 8 block transposed in registers ran
// at 0.27 of a copy and was dropped: docs/PERFORMANCE.md.)

/// Two products of FP8 values with `scale`, rounded to D (16-bit) and packed, low first. `fast`
/// says that no product can be NaN (finite codes times a finite non-zero scale): then plain
/// multiplies and the hardware pair rounding, which need none of narrow2's NaN fix-ups.
template <DType D>
__device__ __forceinline__ uint32_t product2(bool fast, float lo, float hi, float scale) {
  return fast ? round2<D>(__fmul_rn(lo, scale), __fmul_rn(hi, scale))
              : narrow2<D>(mul_f32(lo, scale), mul_f32(hi, scale));
}

/// Whether no product of the FP8 codes in `w0`, `w1` with `scale` can be NaN.
template <DType S>
__device__ __forceinline__ bool no_nan_products8(uint32_t w0, uint32_t w1, float scale) {
  return usable_scale(scale) && (nan_codes<S>(w0) | nan_codes<S>(w1)) == 0;
}

/// Codes 2k and 2k + 1 of the eight in `w` (a row's 8-byte word), as floats.
template <DType S> __device__ __forceinline__ void decode_pair(uint2 w, int k, float& lo, float& hi) {
  decode_fp8x2<S>(((k < 2 ? w.x : w.y) >> (k % 2 * 16)) & 0xFFFFu, lo, hi);
}

/// Eight FP8 codes (one word of a row) times `scale`, rounded in pairs to D and packed (four
/// words): dequantize()'s arithmetic on half a vector.
template <DType S, DType D>
__device__ __forceinline__ void dequant8(uint2 w, float scale, uint32_t out[4]) {
  const bool fast = no_nan_products8<S>(w.x, w.y, scale);
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    float lo, hi;
    decode_pair<S>(w, k, lo, hi);
    out[k] = product2<D>(fast, lo, hi, scale);
  }
}

/// Eight FP8 codes of two adjacent rows (`a` above `b`, same columns) times `scale`: out[e] packs
/// column e's two results, a's low. A transposed output row holds them in this order.
template <DType S, DType D>
__device__ __forceinline__ void dequant8_pairs(uint2 a, uint2 b, float scale, uint32_t out[8]) {
  const bool fast = no_nan_products8<S>(a.x, a.y, scale) && no_nan_products8<S>(b.x, b.y, scale);
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    float a0, a1, b0, b1;
    decode_pair<S>(a, k, a0, a1);
    decode_pair<S>(b, k, b0, b1);
    out[2 * k] = product2<D>(fast, a0, b0, scale);
    out[2 * k + 1] = product2<D>(fast, a1, b1, scale);
  }
}

// The transposed calls of one batch (launch_dequant_batch), as one list of tiles: part p owns
// tiles [first_tile[p], first_tile[p + 1]), row-major over its (row tile, column tile) grid.
constexpr int MAX_BATCH = 32;
struct TileBatch {
  Geometry part[MAX_BATCH];
  uint32_t first_tile[MAX_BATCH + 1];
  uint32_t col_tiles[MAX_BATCH]; ///< column tiles of each part
  int parts;
};

constexpr int TW8 = 128; ///< columns of W per transposed8 tile
constexpr int TH8 = 64;  ///< rows of W per transposed8 tile

// out[k][r] = deq(W[r][begin + k]) for FP8 W and 16-bit results, in the 8-byte layout, for every
// part of a batch. A tile is 128 columns by 64 rows of W. Loading it, each thread takes two units
// of 2 rows x 8 columns (two 8-byte loads each; a warp's load covers 8 rows x 32 bytes, whole
// sectors), dequantizes them and puts each column's two 16-bit results as one 32-bit word into
// the tile: [column][row pair], 33 words a column, so a warp's 32 words land in 32 banks. Writing
// it, 8 threads cover an output row's 64 elements (128 bytes, a whole line) with one 16-byte
// store each, from four words of one column (again 32 banks). The grid is persistent: block b
// does tiles b, b + grid, ... of the batch, the next tile's loads in flight while the current
// one is written, so neither a piece's tail nor a launch per piece leaves multiprocessors idle.
// The scale is per unit: a unit never crosses a block.
// REQUIRES: every part fits_transposed8().
template <DType S, DType D>
__global__ void __launch_bounds__(THREADS) transposed8_kernel(const __grid_constant__ TileBatch batch) {
  constexpr int COL_WARPS = TW8 / 32;                  // warps side by side across a tile
  constexpr int UNITS = TW8 / 8 * (TH8 / 2) / THREADS; // units per thread per tile
  constexpr int STORES = TW8 * TH8 / 8 / THREADS;      // 16-byte stores per thread per tile
  static_assert(UNITS >= 1 && STORES >= 1);
  __shared__ uint32_t tile[TW8][TH8 / 2 + 1];
  int ucol[UNITS], upair[UNITS]; // this thread's units: first column and row pair in a tile
#pragma unroll
  for (int u = 0; u < UNITS; ++u) {
    const int q = threadIdx.x + u * THREADS, lane = q % 32, warp = q / 32;
    ucol[u] = (lane % 4 + warp % COL_WARPS * 4) * 8;
    upair[u] = lane / 4 + warp / COL_WARPS * 8;
  }
  const uint32_t total = batch.first_tile[batch.parts];
  // Where tile t lies: its part, first column and first row of W.
  struct Place {
    int p;
    uint64_t j0, r0;
  };
  auto place = [&](uint32_t t) {
    int p = 0;
    while (t >= batch.first_tile[p + 1])
      ++p;
    const Geometry& g = batch.part[p];
    const uint32_t local = t - batch.first_tile[p];
    return Place{p, g.begin / TW8 * TW8 + uint64_t(local % batch.col_tiles[p]) * TW8,
                 uint64_t(local / batch.col_tiles[p]) * TH8};
  };
  uint2 a[UNITS], b[UNITS];
  auto fetch = [&](const Place& at) {
    const Geometry& g = batch.part[at.p];
#pragma unroll
    for (int u = 0; u < UNITS; ++u) {
      const uint64_t r = at.r0 + 2 * upair[u], c = at.j0 + ucol[u];
      a[u] = b[u] = make_uint2(0, 0);
      if (r < g.R && c < g.C) {
        const uint2* p = reinterpret_cast<const uint2*>(g.src + r * g.C + c);
        a[u] = p[0];
        b[u] = p[g.C / 8];
      }
    }
  };
  uint32_t t = blockIdx.x;
  if (t >= total)
    return;
  Place at = place(t);
  fetch(at);
  for (;;) {
    const Geometry& g = batch.part[at.p];
#pragma unroll
    for (int u = 0; u < UNITS; ++u) {
      const uint64_t r = at.r0 + 2 * upair[u], c = at.j0 + ucol[u];
      if (r >= g.R || c >= g.C)
        continue; // no output element reads these words
      uint32_t words[8];
      dequant8_pairs<S, D>(a[u], b[u], load_scale(g, r >> g.block_shift, c >> g.block_shift),
                           words);
#pragma unroll
      for (int e = 0; e < 8; ++e)
        tile[ucol[u] + e][upair[u]] = words[e];
    }
    __syncthreads();
    const uint32_t next = t + gridDim.x;
    const Place next_at = next < total ? place(next) : at;
    if (next < total)
      fetch(next_at); // in flight while this tile is written
    uint16_t* dst = reinterpret_cast<uint16_t*>(g.dst);
    const uint64_t end = g.begin + g.count;
#pragma unroll
    for (int k = 0; k < STORES; ++k) {
      const int v = threadIdx.x + k * THREADS;
      const int col = v / 8, seg = v % 8 * 4; // a column of W, four of its row-pair words
      const uint64_t j = at.j0 + col, r = at.r0 + 2 * seg;
      if (j < g.begin || j >= end || r >= g.R)
        continue;
      const uint4 y = make_uint4(tile[col][seg], tile[col][seg + 1], tile[col][seg + 2],
                                 tile[col][seg + 3]);
      *reinterpret_cast<uint4*>(dst + (j - g.begin) * g.pitch + r) = y;
    }
    if (next >= total)
      return;
    __syncthreads();
    t = next;
    at = next_at;
  }
}

/// Whether transposed8_kernel takes the call (its REQUIRES).
bool fits_transposed8(const DequantArgs& a, uint64_t pitch) {
  const auto addr = [](const void* p) { return reinterpret_cast<uintptr_t>(p); };
  return a.transpose && addr(a.src) % 8 == 0 && addr(a.dst) % 16 == 0 && pitch % 8 == 0 &&
         a.R % 8 == 0 && a.C % 8 == 0;
}

// out[k][c] = deq(W[begin + k][c]), k < count, c < C: each thread one 8-byte word of a row.
// REQUIRES: C % 8 == 0, src 8-byte and dst 16-byte aligned, pitch % 8 == 0, count * C / 8 < 2^32.
template <DType S, DType D> __global__ void __launch_bounds__(THREADS) rows8_kernel(Geometry g) {
  constexpr int UNROLL = 4;
  const uint32_t per_row = uint32_t(g.C / 8);
  const uint32_t n = uint32_t(g.count * per_row);
  const uint2* src = reinterpret_cast<const uint2*>(g.src) + g.begin * per_row;
  uint16_t* dst = reinterpret_cast<uint16_t*>(g.dst);
  const uint32_t stride = gridDim.x * THREADS;
  for (uint32_t i = blockIdx.x * THREADS + threadIdx.x; i < n; i += stride * UNROLL) {
    uint2 x[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u)
      if (i + u * stride < n)
        x[u] = src[i + u * stride];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const uint32_t w = i + u * stride;
      if (w >= n)
        continue;
      const uint32_t k = w / per_row, c = (w - k * per_row) * 8;
      const float scale = load_scale(g, (g.begin + k) >> g.block_shift, c >> g.block_shift);
      uint32_t y[4];
      dequant8<S, D>(x[u], scale, y);
      *reinterpret_cast<uint4*>(dst + k * g.pitch + c) = make_uint4(y[0], y[1], y[2], y[3]);
    }
  }
}

/// Whether rows8_kernel takes the call (its REQUIRES).
bool fits_rows8(const DequantArgs& a, uint64_t pitch) {
  const auto addr = [](const void* p) { return reinterpret_cast<uintptr_t>(p); };
  return !a.transpose && addr(a.src) % 8 == 0 && addr(a.dst) % 16 == 0 && pitch % 8 == 0 &&
         a.C % 8 == 0 && a.count * (a.C / 8) < (uint64_t(1) << 32);
}

bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

int multiprocessors() {
  static const int count = [] {
    int device = 0, n = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) != cudaSuccess)
      n = 0;
    cudaGetLastError();
    return n > 0 ? n : 132;
  }();
  return count;
}

template <DType S, DType D> Geometry geometry(const DequantArgs& a) {
  const uint64_t in_es = dtype_bits(S) / 8, out_es = dtype_bits(D) / 8;
  Geometry g{};
  g.src = a.src;
  g.scales = a.scales;
  g.dst = a.dst;
  g.R = a.R;
  g.C = a.C;
  g.begin = a.begin;
  g.count = a.count;
  g.pitch = a.dst_pitch ? a.dst_pitch : (a.transpose ? a.R : a.C);
  g.scale_cols = scale_blocks(a.C, a.block);
  g.block_shift = std::countr_zero(a.block);
  g.scale_dtype = a.scale_dtype;
  g.vector_loads = aligned16(a.src) && (a.C * in_es) % 16 == 0;
  g.vector_stores = aligned16(a.dst) && (g.pitch * out_es) % 16 == 0;
  return g;
}

/// Blocks of transposed8_kernel<S, D> that fit one multiprocessor at once.
template <DType S, DType D> int transposed8_per_sm() {
  static const int n = [] {
    int blocks = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, transposed8_kernel<S, D>, THREADS,
                                                      0) != cudaSuccess)
      blocks = 0;
    cudaGetLastError();
    return blocks > 0 ? blocks : 4;
  }();
  return n;
}

/// One launch of transposed8_kernel for the n (<= MAX_BATCH) calls at a, every one of them
/// non-empty and fits_transposed8(): a persistent grid of at most one full wave.
template <DType S, DType D>
cudaError_t launch_transposed8(const DequantArgs* a, size_t n, cudaStream_t stream) {
  TileBatch batch{};
  uint64_t tiles = 0;
  for (size_t i = 0; i < n; ++i) {
    batch.part[i] = geometry<S, D>(a[i]);
    const uint64_t cols = (a[i].begin + a[i].count + TW8 - 1) / TW8 - a[i].begin / TW8;
    const uint64_t rows = (a[i].R + TH8 - 1) / TH8;
    batch.first_tile[i] = uint32_t(tiles);
    batch.col_tiles[i] = uint32_t(cols);
    tiles += cols * rows;
    if (tiles > UINT32_MAX)
      return cudaErrorInvalidConfiguration; // 2^32 tiles: 35 TB of weights in one call
  }
  batch.first_tile[n] = uint32_t(tiles);
  batch.parts = int(n);
  const uint64_t wave = uint64_t(multiprocessors()) * transposed8_per_sm<S, D>();
  transposed8_kernel<S, D><<<unsigned(std::min(tiles, wave)), THREADS, 0, stream>>>(batch);
  return cudaGetLastError();
}

template <DType S, DType D> cudaError_t launch(const DequantArgs& a, cudaStream_t stream) {
  Geometry g = geometry<S, D>(a);
  // Enough blocks to fill every multiprocessor several times over, each with work to walk.
  const uint64_t target_blocks = uint64_t(multiprocessors()) * 8;
  if constexpr (is_fp8(S) && D != DType::F32) {
    if (fits_rows8(a, g.pitch)) {
      const uint64_t words = a.count * (a.C / 8);
      const uint64_t blocks =
          std::clamp<uint64_t>((words + THREADS * 4 - 1) / (THREADS * 4), 1, target_blocks);
      rows8_kernel<S, D><<<unsigned(blocks), THREADS, 0, stream>>>(g);
      return cudaGetLastError();
    }
    if (fits_transposed8(a, g.pitch))
      return launch_transposed8<S, D>(&a, 1, stream);
  }
  if (a.transpose) {
    const uint64_t j_tiles = (a.begin + a.count + TILE - 1) / TILE - a.begin / TILE;
    const uint64_t r_tiles = (a.R + TILE - 1) / TILE;
    const uint64_t strips = std::clamp<uint64_t>(target_blocks / j_tiles, 1, r_tiles);
    g.r_tiles_per_block = uint32_t((r_tiles + strips - 1) / strips);
    const uint64_t y = (r_tiles + g.r_tiles_per_block - 1) / g.r_tiles_per_block;
    if (j_tiles > 0x7FFFFFFF || y > 65535)
      return cudaErrorInvalidConfiguration;
    transposed_kernel<S, D><<<dim3(unsigned(j_tiles), unsigned(y)), THREADS, 0, stream>>>(g);
  } else {
    const uint64_t blocks = std::clamp<uint64_t>(a.count, 1, std::min<uint64_t>(target_blocks * 4, 0x7FFFFFFF));
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

bool empty(const DequantArgs& a) {
  return a.count == 0 || a.R == 0 || a.C == 0;
}

/// Whether a call can join a batch of transposed8_kernel.
bool batchable(const DequantArgs& a) {
  return is_fp8(a.src_dtype) && (a.dst_dtype == DType::BF16 || a.dst_dtype == DType::F16) &&
         !empty(a) && a.block >= TILE && std::has_single_bit(a.block) &&
         fits_transposed8(a, a.dst_pitch ? a.dst_pitch : a.R);
}

} // namespace

cudaError_t launch_dequant(const DequantArgs& a, cudaStream_t stream) {
  if (empty(a))
    return cudaSuccess;
  if (a.block < TILE || !std::has_single_bit(a.block))
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

cudaError_t launch_dequant_batch(const DequantArgs* args, size_t n, cudaStream_t stream) {
  for (size_t i = 0; i < n;) {
    const DequantArgs& a = args[i];
    size_t k = 0; // calls from i that share one launch
    if (batchable(a))
      while (k < MAX_BATCH && i + k < n && batchable(args[i + k]) &&
             args[i + k].src_dtype == a.src_dtype && args[i + k].dst_dtype == a.dst_dtype)
        ++k;
    cudaError_t err = cudaSuccess;
    if (k == 0) {
      err = launch_dequant(a, stream);
      k = 1;
    } else if (a.src_dtype == DType::F8_E4M3) {
      err = a.dst_dtype == DType::BF16
                ? launch_transposed8<DType::F8_E4M3, DType::BF16>(args + i, k, stream)
                : launch_transposed8<DType::F8_E4M3, DType::F16>(args + i, k, stream);
    } else {
      err = a.dst_dtype == DType::BF16
                ? launch_transposed8<DType::F8_E5M2, DType::BF16>(args + i, k, stream)
                : launch_transposed8<DType::F8_E5M2, DType::F16>(args + i, k, stream);
    }
    if (err != cudaSuccess)
      return err;
    i += k;
  }
  return cudaSuccess;
}

} // namespace shardshift
