// transpose_cuda.cu: the transpose-fold kernel (transpose.h) on the GPU.
//
// A thread block transposes tiles of TA input rows (a) by TJ input columns (j), which become TJ
// output rows of TA elements. A tile goes through shared memory as raw source elements; the fold
// and the cast happen on the way out, one element at a time, with conversions that give exactly
// the bits of numerics.h (the CPU kernel's functions). The grid is persistent: each block walks
// a list of tiles and issues the loads of its next tile before converting and writing the
// current one, so loads are in flight while the arithmetic runs.
//
// Memory access. Both global phases move 16-byte vectors, eight consecutive lanes covering one
// 128-byte line: lanes load 16 bytes along an input row and write 16 bytes along an output row
// (VO consecutive a for one j). Tiles at the edge of the matrix, and launches whose pointers,
// row pitches or col_begin are not 16-byte aligned, take a slow path that looks at each vector's
// address and moves it in the widest pieces it allows (8, 4 bytes, or element by element).
//
// Shared memory layout. A tile row is TJ * S bytes, a multiple of 128, so without a swizzle the
// read phase (eight lanes reading the same column j of rows a, a + VO, ..., a + 7 VO) would hit
// one bank eight times. The 16-byte chunk index of every element is XORed with (a / VO) mod 8:
// those eight rows then land in eight different chunks of the 128-byte bank window, and a row
// written as eight consecutive 16-byte chunks stays a permutation of the window, so both the
// vector stores and the element reads are free of bank conflicts (see Tile::column).
//
// Numerics: one IEEE f32 multiply (__fmul_rn: never contracted into an FMA), no -use_fast_math,
// and nvcc's default -ftz=false, so subnormals are neither flushed nor produced as zero.
#include "numerics.h"
#include "transpose_cuda.h"

#include <algorithm>
#include <cstdint>

#include <cuda_fp16.h>

namespace shardshift {

namespace {

constexpr int THREADS = 256;

// ---------------------------------------------------------------------------------------------
// Element operations: Op::In and Op::Out are the storage types; set_expert() loads the expert's
// scale; operator() maps one source element to one output element.
//
// The conversions give exactly the bits of numerics.h (the CPU kernel's functions, which the tests
// compare against), in fewer instructions: F16 goes through the hardware converters, which are
// exact for every non-NaN value here because nothing flushes subnormals (no -ftz), and NaNs are
// handled by hand the way numerics.h does (payload kept when widening; canonical quiet NaN with
// the input's sign when rounding; canonical NaN with sign(a) xor sign(b) for a product).

template <DType T> struct Storage;
template <> struct Storage<DType::BF16> { using type = uint16_t; };
template <> struct Storage<DType::F16> { using type = uint16_t; };
template <> struct Storage<DType::F32> { using type = uint32_t; };

/// T -> F32, exact (numerics::bf16_to_f32 / f16_to_f32 / f32_from_bits).
template <DType T> __device__ __forceinline__ float widen(typename Storage<T>::type x) {
  if constexpr (T == DType::BF16) {
    return __uint_as_float(uint32_t(x) << 16);
  } else if constexpr (T == DType::F16) {
    const float f = __half2float(__ushort_as_half(x));
    const uint32_t nan = (uint32_t(x & 0x8000u) << 16) | 0x7F800000u | (uint32_t(x & 0x3FFu) << 13);
    return (x & 0x7FFFu) > 0x7C00u ? __uint_as_float(nan) : f;
  } else {
    return __uint_as_float(x);
  }
}

/// F32 -> T, round to nearest even; NaN -> canonical NaN of T with the input's sign
/// (numerics::f32_to_bf16_rne / f32_to_f16_rne / f32_canonical_bits).
template <DType T> __device__ __forceinline__ typename Storage<T>::type narrow(float f) {
  const uint32_t u = __float_as_uint(f);
  const bool nan = isnan(f);
  if constexpr (T == DType::BF16) {
    const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    return uint16_t(nan ? ((u >> 16) & 0x8000u) | numerics::BF16_CANONICAL_NAN : rounded);
  } else if constexpr (T == DType::F16) {
    const uint16_t rounded = __half_as_ushort(__float2half_rn(f));
    return nan ? uint16_t(((u >> 16) & 0x8000u) | numerics::F16_CANONICAL_NAN) : rounded;
  } else {
    return nan ? (u & numerics::F32_SIGN) | numerics::F32_CANONICAL_NAN : u;
  }
}

/// A value of FROM as a value of TO: widening is exact, narrowing rounds to nearest even.
template <DType FROM, DType TO>
__device__ __forceinline__ typename Storage<TO>::type cast(typename Storage<FROM>::type bits) {
  if constexpr (FROM == TO)
    return bits;
  else
    return narrow<TO>(widen<FROM>(bits));
}

/// PyTorch's promotion among BF16, F16 and F32 (two different 16-bit types meet in F32).
constexpr DType promoted(DType a, DType b) {
  return a == b ? a : DType::F32;
}

/// src * scale computed in f32, rounded once to the promoted type P, then cast to DST; without a
/// scale, a plain cast from SRC to DST.
template <DType SRC, bool HAS_SCALE, DType SCALE, DType DST> struct FoldOp {
  using In = typename Storage<SRC>::type;
  using Out = typename Storage<DST>::type;
  float scale = 1.0f;

  __device__ void set_expert(const std::byte* scales, uint64_t e) {
    if constexpr (HAS_SCALE)
      scale = widen<SCALE>(reinterpret_cast<const typename Storage<SCALE>::type*>(scales)[e]);
  }
  __device__ Out operator()(In x) const {
    if constexpr (HAS_SCALE) {
      constexpr DType P = promoted(SRC, SCALE);
      const float w = widen<SRC>(x);
      float p = __fmul_rn(w, scale); // numerics::mul_f32: one IEEE multiply, never contracted
      if (isnan(p))
        p = __uint_as_float(((__float_as_uint(w) ^ __float_as_uint(scale)) & numerics::F32_SIGN) |
                            numerics::F32_CANONICAL_NAN);
      return cast<P, DST>(narrow<P>(p));
    } else {
      return cast<SRC, DST>(x);
    }
  }
};

/// Pure transpose: the bits move unchanged.
template <class T> struct CopyOp {
  using In = T;
  using Out = T;
  __device__ void set_expert(const std::byte*, uint64_t) {}
  __device__ T operator()(T x) const { return x; }
};

// ---------------------------------------------------------------------------------------------
// 16-byte vectors. The fast paths move them with one instruction; the slow path (tiles at the
// matrix edge, pointers or pitches that are not 16-byte aligned) looks at each vector's address
// and uses the widest pieces it allows, element by element where the vector crosses the edge.

template <class T> union Vec16 {
  uint4 v;
  T e[16 / sizeof(T)];
};

/// `valid` leading elements from p (the rest zero).
template <class In> __device__ __forceinline__ uint4 load_vec_slow(const std::byte* p, int valid) {
  constexpr int V = 16 / int(sizeof(In));
  const auto addr = reinterpret_cast<uintptr_t>(p);
  if (valid >= V) {
    if ((addr & 15) == 0)
      return __ldg(reinterpret_cast<const uint4*>(p));
    if ((addr & 7) == 0) {
      const auto* q = reinterpret_cast<const uint2*>(p);
      const uint2 lo = __ldg(q), hi = __ldg(q + 1);
      return make_uint4(lo.x, lo.y, hi.x, hi.y);
    }
    if ((addr & 3) == 0) {
      const auto* q = reinterpret_cast<const unsigned*>(p);
      return make_uint4(__ldg(q), __ldg(q + 1), __ldg(q + 2), __ldg(q + 3));
    }
  }
  Vec16<In> t;
#pragma unroll
  for (int k = 0; k < V; ++k)
    t.e[k] = k < valid ? reinterpret_cast<const In*>(p)[k] : In(0);
  return t.v;
}

/// The `valid` leading elements of v to p.
template <class Out>
__device__ __forceinline__ void store_vec_slow(std::byte* p, uint4 v, int valid) {
  constexpr int V = 16 / int(sizeof(Out));
  const auto addr = reinterpret_cast<uintptr_t>(p);
  if (valid >= V) {
    if ((addr & 15) == 0) {
      *reinterpret_cast<uint4*>(p) = v;
      return;
    }
    if ((addr & 7) == 0) {
      auto* q = reinterpret_cast<uint2*>(p);
      q[0] = make_uint2(v.x, v.y);
      q[1] = make_uint2(v.z, v.w);
      return;
    }
    if ((addr & 3) == 0) {
      auto* q = reinterpret_cast<unsigned*>(p);
      q[0] = v.x;
      q[1] = v.y;
      q[2] = v.z;
      q[3] = v.w;
      return;
    }
  }
  Vec16<Out> o;
  o.v = v;
#pragma unroll
  for (int k = 0; k < V; ++k)
    if (k < valid)
      reinterpret_cast<Out*>(p)[k] = o.e[k];
}

// ---------------------------------------------------------------------------------------------
// The tile.

struct Geometry {
  const std::byte* src;
  std::byte* dst;
  const std::byte* scales;
  uint64_t experts, A, B, col_begin, cols;
  uint32_t tiles_j, tiles_a, tiles; ///< tiles along cols, along rows, in all
  bool load16, store16;             ///< every row start allows 16-byte loads / stores
};

struct TilePos {
  uint64_t e, a0, j0;
  bool interior; ///< the whole tile lies inside the matrix
};

template <class Op, int TA, int TJ> struct Tile {
  using In = typename Op::In;
  using Out = typename Op::Out;
  static constexpr int S = sizeof(In), D = sizeof(Out);
  static constexpr int VI = 16 / S, VO = 16 / D; // elements per 16-byte vector
  static constexpr int NVI = TJ / VI;            // input vectors per tile row
  static constexpr int NVO = TA / VO;            // output vectors per output row of the tile
  static constexpr int ROW = TJ * S;             // shared-memory bytes per tile row
  static constexpr int BYTES = TA * ROW;
  static constexpr int LOADS = TA * NVI / THREADS;  // input vectors per thread
  static constexpr int STORES = TJ * NVO / THREADS; // output vectors per thread
  static constexpr int RSTEP = THREADS / NVI;       // tile rows between a thread's input vectors
  static constexpr int GROUPS = NVO / 8;            // warps side by side along one output row
  static constexpr int JSTEP = THREADS / 32 / GROUPS * 4; // output rows between its outputs
  static_assert(ROW % 128 == 0, "a tile row must span whole 128-byte bank windows");
  static_assert(NVO % 8 == 0, "eight lanes write one 128-byte piece of an output row");
  static_assert(LOADS * THREADS == TA * NVI && STORES * THREADS == TJ * NVO,
                "every thread moves the same number of vectors");
  static_assert(THREADS % NVI == 0 && (THREADS / 32) % GROUPS == 0,
                "a thread's vectors must stay in one column of vectors");

  // Byte column of element j in a row whose swizzle is `sw` = (row / VO) mod 8. Conflict check
  // of the read phase: a warp reads rows a = (8 h + l % 8) VO + k for its lanes l (h, k fixed)
  // and columns j = 4 g + l / 8. The four columns are 4 S <= 16 contiguous bytes of one chunk
  // (S <= 4), and the swizzle puts the eight rows in eight different chunks of the window:
  // distinct banks. For S = 8 a 64-bit access is served per half-warp, whose two columns fill
  // one chunk: again eight chunks. Vector stores write a row's eight chunks of a window, which
  // the XOR only permutes.
  __device__ static __forceinline__ int column(int j, int sw) {
    const int chunk = (j * S) >> 4;
    return (((chunk ^ sw) & 7) | (chunk & ~7)) * 16 + ((j * S) & 15);
  }
  __device__ static __forceinline__ int offset(int a, int j) {
    return a * ROW + column(j, (a / VO) & 7);
  }
};

/// A tile by its indices: expert, tile row, tile column. Tiles are numbered expert by expert,
/// row by row; a block walks a contiguous range, so the next tile is an increment with carries
/// (no division in the loop).
struct TileIndex {
  uint32_t e, ta, tj;
  __device__ void advance(const Geometry& g) {
    if (++tj == g.tiles_j) {
      tj = 0;
      if (++ta == g.tiles_a) {
        ta = 0;
        ++e;
      }
    }
  }
};

__device__ __forceinline__ TileIndex tile_index(const Geometry& g, uint32_t t) {
  const uint32_t per_expert = g.tiles_a * g.tiles_j, in_matrix = t % per_expert;
  return {t / per_expert, in_matrix / g.tiles_j, in_matrix % g.tiles_j};
}

template <int TA, int TJ>
__device__ __forceinline__ TilePos tile_pos(const Geometry& g, const TileIndex& i) {
  TilePos p;
  p.e = i.e;
  p.a0 = uint64_t(i.ta) * TA;
  p.j0 = uint64_t(i.tj) * TJ;
  p.interior = p.a0 + TA <= g.A && p.j0 + TJ <= g.cols;
  return p;
}

/// This thread's first input vector; the others follow RSTEP rows apart.
template <class T>
__device__ __forceinline__ const std::byte* load_base(const Geometry& g, const TilePos& t) {
  const int cv = threadIdx.x % T::NVI, a_first = threadIdx.x / T::NVI;
  return g.src +
         ((t.e * g.A + t.a0 + a_first) * g.B + g.col_begin + t.j0 + uint64_t(cv) * T::VI) * T::S;
}

// cp.async: global -> shared copies that need no registers and complete in the background, in
// groups that a thread waits for by count.
__device__ __forceinline__ void copy_async16(std::byte* smem, const std::byte* src, int bytes) {
  const auto dst = uint32_t(__cvta_generic_to_shared(smem));
  // Copies `bytes` (0..16) and zero-fills the rest of the 16: edge vectors need no special case.
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void copy_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int PENDING> __device__ __forceinline__ void copy_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(PENDING) : "memory");
}

/// Starts the asynchronous load of a tile (16-byte aligned rows: g.load16) into `buf`.
template <class T>
__device__ __forceinline__ void load_async(const Geometry& g, const TilePos& t, std::byte* buf) {
  const int cv = threadIdx.x % T::NVI, a_first = threadIdx.x / T::NVI;
  const int64_t rows_left = int64_t(g.A - t.a0) - a_first;
  const int64_t cols_left = int64_t(g.cols - t.j0) - int64_t(cv) * T::VI;
  const int valid = int(cols_left < 0 ? 0 : cols_left < T::VI ? cols_left : T::VI);
  const std::byte* p = load_base<T>(g, t);
  const uint64_t step = uint64_t(T::RSTEP) * g.B * T::S;
#pragma unroll
  for (int r = 0; r < T::LOADS; ++r) {
    const bool row_ok = r * T::RSTEP < rows_left;
    // A vector outside the matrix copies nothing (its address is only a placeholder).
    copy_async16(buf + T::offset(a_first + r * T::RSTEP, cv * T::VI),
                 row_ok && valid > 0 ? p + r * step : g.src, row_ok ? valid * T::S : 0);
  }
}

/// Synchronous load for launches without 16-byte aligned rows: vector by vector, each in the
/// widest pieces its address allows (a loop, not unrolled, to keep the register count down).
template <class T> __device__ void load_slow(const Geometry& g, const TilePos& t, std::byte* buf) {
  const int cv = threadIdx.x % T::NVI, a_first = threadIdx.x / T::NVI;
  const int64_t rows_left = int64_t(g.A - t.a0) - a_first;
  const int64_t cols_left = int64_t(g.cols - t.j0) - int64_t(cv) * T::VI;
  const int valid = int(cols_left < 0 ? 0 : cols_left < T::VI ? cols_left : T::VI);
  const std::byte* p = load_base<T>(g, t);
  const uint64_t step = uint64_t(T::RSTEP) * g.B * T::S;
#pragma unroll 1
  for (int r = 0; r < T::LOADS; ++r) {
    const uint4 v =
        load_vec_slow<typename T::In>(p + r * step, r * T::RSTEP < rows_left ? valid : 0);
    *reinterpret_cast<uint4*>(buf + T::offset(a_first + r * T::RSTEP, cv * T::VI)) = v;
  }
}

/// Output vector of rows av * VO .. av * VO + VO - 1 of column j, through the element operation.
/// All VO rows share one swizzle, so the reads are one base address plus constant offsets.
template <class T, class Op>
__device__ __forceinline__ uint4 gather(const Op& op, const std::byte* buf, int av, int j) {
  const std::byte* base = buf + av * T::VO * T::ROW + T::column(j, av & 7);
  Vec16<typename T::Out> o;
#pragma unroll
  for (int k = 0; k < T::VO; ++k)
    o.e[k] = op(*reinterpret_cast<const typename T::In*>(base + k * T::ROW));
  return o.v;
}

/// Shared -> global through the element operation. Eight lanes write 128 contiguous bytes of one
/// output row (vectors av = 8 h .. 8 h + 7), a warp four rows; a thread's vectors lie in one
/// column of vectors, JSTEP output rows apart.
template <class T, class Op>
__device__ __forceinline__ void store_tile(const Geometry& g, const Op& op, const TilePos& t,
                                           const std::byte* buf) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int av = (warp % T::GROUPS) * 8 + lane % 8;
  const int j_first = (warp / T::GROUPS) * 4 + lane / 8;
  const uint64_t ga = t.a0 + uint64_t(av) * T::VO;
  const uint64_t pitch = g.A * T::D;
  std::byte* p = g.dst + ((t.e * g.cols + t.j0 + j_first) * g.A + ga) * T::D;
  if (t.interior && g.store16) {
#pragma unroll
    for (int r = 0; r < T::STORES; ++r)
      *reinterpret_cast<uint4*>(p + r * T::JSTEP * pitch) =
          gather<T>(op, buf, av, j_first + r * T::JSTEP);
    return;
  }
  // Edge tiles and unaligned output rows: each vector as its address and the edge allow.
  const int64_t rows_left = int64_t(g.cols - t.j0) - j_first;
  const int64_t a_left = int64_t(g.A) - int64_t(ga);
  if (a_left <= 0)
    return;
  const int valid = int(a_left < T::VO ? a_left : T::VO);
#pragma unroll 1
  for (int r = 0; r < T::STORES && r * T::JSTEP < rows_left; ++r)
    store_vec_slow<typename T::Out>(p + r * T::JSTEP * pitch,
                                    gather<T>(op, buf, av, j_first + r * T::JSTEP), valid);
}

/// Tiles in flight per block: the one being written out and STAGES - 1 loading behind it.
constexpr int STAGES = 3;

/// A persistent grid: block b transposes the tiles [b * tiles / grid, (b + 1) * tiles / grid)
/// through STAGES shared-memory buffers. The loads of the next STAGES - 1 tiles are in flight
/// (cp.async) while a tile is converted and written, so the memory system never waits for the
/// arithmetic, and the bytes in flight need no registers.
template <class Op, int TA, int TJ, int MIN_BLOCKS>
__global__ void __launch_bounds__(THREADS, MIN_BLOCKS) transpose_fold_kernel(Geometry g) {
  using T = Tile<Op, TA, TJ>;
  extern __shared__ __align__(128) std::byte smem[]; // STAGES * T::BYTES
  const uint32_t begin = uint32_t(uint64_t(blockIdx.x) * g.tiles / gridDim.x);
  const uint32_t end = uint32_t(uint64_t(blockIdx.x + 1) * g.tiles / gridDim.x);
  TileIndex cur = tile_index(g, begin);
  if (!g.load16) {
    for (uint32_t t = begin; t < end; ++t, cur.advance(g)) {
      const TilePos pos = tile_pos<TA, TJ>(g, cur);
      load_slow<T>(g, pos, smem);
      __syncthreads();
      Op op;
      op.set_expert(g.scales, pos.e);
      store_tile<T>(g, op, pos, smem);
      __syncthreads();
    }
    return;
  }
  // One commit group per tile, empty past the end, so that "all but the newest STAGES - 1
  // groups are complete" always means "the current tile has landed".
  TileIndex ahead = cur;
  uint32_t issued = begin;
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s, ++issued) {
    if (issued < end) {
      load_async<T>(g, tile_pos<TA, TJ>(g, ahead), smem + s * T::BYTES);
      ahead.advance(g);
    }
    copy_async_commit();
  }
  int stage = 0;
  for (uint32_t t = begin; t < end; ++t, ++issued, cur.advance(g)) {
    // The buffer of the tile STAGES - 1 ahead was last read in the previous iteration, before
    // its closing barrier.
    const int ahead_stage = stage == 0 ? STAGES - 1 : stage - 1;
    if (issued < end) {
      load_async<T>(g, tile_pos<TA, TJ>(g, ahead), smem + ahead_stage * T::BYTES);
      ahead.advance(g);
    }
    copy_async_commit();
    copy_async_wait<STAGES - 1>();
    __syncthreads(); // every thread's part of the current tile has landed
    const TilePos pos = tile_pos<TA, TJ>(g, cur);
    Op op;
    op.set_expert(g.scales, pos.e);
    store_tile<T>(g, op, pos, smem + stage * T::BYTES);
    __syncthreads(); // done reading the buffer before it is refilled
    stage = stage == STAGES - 1 ? 0 : stage + 1;
  }
}

// ---------------------------------------------------------------------------------------------
// Host side: launch configuration and dtype dispatch.

/// Whether base + k * pitch + offset is 16-byte aligned for every k.
bool aligned16(const std::byte* base, uint64_t pitch_bytes, uint64_t offset_bytes) {
  return ((reinterpret_cast<uintptr_t>(base) | pitch_bytes | offset_bytes) & 15) == 0;
}

/// MIN_BLOCKS caps the registers (65536 / (256 * MIN_BLOCKS)) so that that many blocks fit on an
/// SM: six blocks of 8 KB tiles or four of 16 KB tiles (shared memory allows no more), each with
/// STAGES tiles in flight.
template <class Op, int TA, int TJ, int MIN_BLOCKS = (Tile<Op, TA, TJ>::BYTES > 8192 ? 4 : 6)>
cudaError_t launch_tiles(const TransposeArgs& a, cudaStream_t stream) {
  using T = Tile<Op, TA, TJ>;
  const uint64_t tiles_j = (a.cols + TJ - 1) / TJ, tiles_a = (a.A + TA - 1) / TA;
  const uint64_t per_expert = tiles_j * tiles_a, tiles = per_expert * a.experts;
  if (tiles >= (uint64_t(1) << 31))
    return cudaErrorInvalidConfiguration;
  Geometry g{a.src,
             a.dst,
             a.scales,
             a.experts,
             a.A,
             a.B,
             a.col_begin,
             a.cols,
             uint32_t(tiles_j),
             uint32_t(tiles_a),
             uint32_t(tiles),
             aligned16(a.src, a.B * T::S, a.col_begin * T::S),
             aligned16(a.dst, a.A * T::D, 0)};
  auto* kernel = transpose_fold_kernel<Op, TA, TJ, MIN_BLOCKS>;
  constexpr int SMEM = STAGES * T::BYTES;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM);
  if (err != cudaSuccess)
    return err;
  // The largest shared-memory carveout, so that the tiles never limit occupancy.
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                             cudaSharedmemCarveoutMaxShared);
  if (err != cudaSuccess)
    return err;
  int device = 0, sms = 0, per_sm = 0;
  if ((err = cudaGetDevice(&device)) != cudaSuccess)
    return err;
  if ((err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device)) != cudaSuccess)
    return err;
  if ((err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, THREADS, SMEM)) !=
      cudaSuccess)
    return err;
  const uint64_t blocks = std::min<uint64_t>(tiles, uint64_t(std::max(1, sms * per_sm)));
  kernel<<<unsigned(blocks), THREADS, SMEM, stream>>>(g);
  return cudaGetLastError();
}

// Tile shapes: input rows of 128 or 256 bytes, output rows of 128 to 512 bytes, 8 or 16 KB of
// input per tile. Larger tiles spread the per-tile bookkeeping over more elements a thread: for
// 2-byte elements 128 x 64 beats 64 x 64 by 6-9% (docs/PERFORMANCE.md).
template <class Op>
cudaError_t launch_op(const TransposeArgs& a, cudaStream_t stream, CudaTileVariant variant) {
  constexpr int S = sizeof(typename Op::In), D = sizeof(typename Op::Out);
  if constexpr (S == 1)
    return launch_tiles<Op, 128, 128>(a, stream);
  else if constexpr (S == 2 && D == 2)
    return variant == CudaTileVariant::small ? launch_tiles<Op, 64, 64>(a, stream)
                                             : launch_tiles<Op, 128, 64>(a, stream);
  else if constexpr (S == 8)
    return launch_tiles<Op, 64, 32>(a, stream);
  else
    return launch_tiles<Op, 64, 64>(a, stream);
}

template <DType SRC, bool HAS_SCALE, DType SCALE>
cudaError_t dispatch_dst(const TransposeArgs& a, cudaStream_t stream, CudaTileVariant variant) {
  switch (a.dst_dtype) {
  case DType::BF16:
    return launch_op<FoldOp<SRC, HAS_SCALE, SCALE, DType::BF16>>(a, stream, variant);
  case DType::F16:
    return launch_op<FoldOp<SRC, HAS_SCALE, SCALE, DType::F16>>(a, stream, variant);
  case DType::F32:
    return launch_op<FoldOp<SRC, HAS_SCALE, SCALE, DType::F32>>(a, stream, variant);
  default:
    return cudaErrorInvalidValue;
  }
}

template <DType SRC>
cudaError_t dispatch_scale(const TransposeArgs& a, cudaStream_t stream, CudaTileVariant variant) {
  if (!a.scales)
    return dispatch_dst<SRC, false, SRC>(a, stream, variant);
  switch (a.scale_dtype) {
  case DType::BF16:
    return dispatch_dst<SRC, true, DType::BF16>(a, stream, variant);
  case DType::F16:
    return dispatch_dst<SRC, true, DType::F16>(a, stream, variant);
  case DType::F32:
    return dispatch_dst<SRC, true, DType::F32>(a, stream, variant);
  default:
    return cudaErrorInvalidValue;
  }
}

} // namespace

cudaError_t launch_transpose_fold(const TransposeArgs& a, cudaStream_t stream,
                                  CudaTileVariant variant) {
  if (a.experts == 0 || a.A == 0 || a.cols == 0)
    return cudaSuccess;
  if (!a.scales && a.src_dtype == a.dst_dtype) {
    switch (dtype_bits(a.src_dtype)) {
    case 8:
      return launch_op<CopyOp<uint8_t>>(a, stream, variant);
    case 16:
      return launch_op<CopyOp<uint16_t>>(a, stream, variant);
    case 32:
      return launch_op<CopyOp<uint32_t>>(a, stream, variant);
    case 64:
      return launch_op<CopyOp<uint64_t>>(a, stream, variant);
    default:
      return cudaErrorInvalidValue;
    }
  }
  switch (a.src_dtype) {
  case DType::BF16:
    return dispatch_scale<DType::BF16>(a, stream, variant);
  case DType::F16:
    return dispatch_scale<DType::F16>(a, stream, variant);
  case DType::F32:
    return dispatch_scale<DType::F32>(a, stream, variant);
  default:
    return cudaErrorInvalidValue;
  }
}

} // namespace shardshift
