// transpose_cuda.cu: the transpose-fold kernel (transpose.h) on the GPU.
//
// One thread block transposes one tile of one expert: TA input rows (a) by TJ input columns (j),
// which become TJ output rows of TA elements. The tile goes through shared memory as raw source
// elements; the fold and the cast happen on the way out, one element at a time, with the same
// numerics.h functions the CPU kernel uses, so both paths produce the same bits.
//
// Memory access. Both global phases move 16-byte vectors, eight consecutive lanes covering one
// 128-byte line: lanes load 16 bytes along an input row, and write 16 bytes along an output row
// (VO consecutive a for one j). Where the pointers, row pitches or col_begin do not allow 16-byte
// alignment, the same vectors are moved in 8-, 4-, 2- or 1-byte pieces (the widest that every
// vector allows, chosen once per launch); vectors that cross the edge of the matrix are moved
// element by element.
//
// Shared memory layout. A tile row is TJ * S bytes, a multiple of 128, so without a swizzle the
// read phase (eight lanes reading the same column j of rows a, a + VO, ..., a + 7 VO) would hit
// one bank eight times. The 16-byte chunk index of every element is XORed with (a / VO) mod 8:
// those eight rows then land in eight different chunks of the 128-byte bank window, and a row
// written as eight consecutive 16-byte chunks stays a permutation of the window, so both the
// vector stores and the element reads are free of bank conflicts (checked in the comment at
// tile_offset for every element width).
//
// Numerics: plain IEEE float multiply (no -use_fast_math; nvcc's default -ftz=false keeps
// subnormals); the single product cannot be contracted into an FMA.
#include "numerics.h"
#include "transpose_cuda.h"

#include <algorithm>
#include <climits>
#include <cstdint>

namespace shardshift {

namespace {

constexpr int THREADS = 256;
constexpr unsigned MAX_GRID_Y = 65535;

// ---------------------------------------------------------------------------------------------
// Element operations: Op::In and Op::Out are the storage types; set_expert() loads the expert's
// scale; operator() maps one source element to one output element.

template <DType T> struct Storage;
template <> struct Storage<DType::BF16> { using type = uint16_t; };
template <> struct Storage<DType::F16> { using type = uint16_t; };
template <> struct Storage<DType::F32> { using type = uint32_t; };

template <DType T> __device__ __forceinline__ float to_f32(typename Storage<T>::type bits) {
  if constexpr (T == DType::BF16)
    return numerics::bf16_to_f32(bits);
  else if constexpr (T == DType::F16)
    return numerics::f16_to_f32(bits);
  else
    return numerics::f32_from_bits(bits);
}

/// Rounds an f32 value to T (RNE; NaN -> the canonical NaN of T with the input's sign).
template <DType T> __device__ __forceinline__ typename Storage<T>::type from_f32(float f) {
  if constexpr (T == DType::BF16)
    return numerics::f32_to_bf16_rne(f);
  else if constexpr (T == DType::F16)
    return numerics::f32_to_f16_rne(f);
  else
    return numerics::f32_canonical_bits(numerics::f32_bits(f));
}

/// A value of FROM as a value of TO: widening is exact, narrowing rounds to nearest even.
template <DType FROM, DType TO>
__device__ __forceinline__ typename Storage<TO>::type cast(typename Storage<FROM>::type bits) {
  if constexpr (FROM == TO)
    return bits;
  else
    return from_f32<TO>(to_f32<FROM>(bits));
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
      scale = to_f32<SCALE>(reinterpret_cast<const typename Storage<SCALE>::type*>(scales)[e]);
  }
  __device__ Out operator()(In x) const {
    if constexpr (HAS_SCALE) {
      constexpr DType P = promoted(SRC, SCALE);
      return cast<P, DST>(from_f32<P>(numerics::mul_f32(to_f32<SRC>(x), scale)));
    } else
      return cast<SRC, DST>(x);
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
// 16-byte vectors moved in pieces of W bytes (W = 16 is one instruction).

template <class T> union Vec16 {
  uint4 v;
  T e[16 / sizeof(T)];
};

template <int W> __device__ __forceinline__ uint4 load16(const std::byte* p) {
  if constexpr (W == 16) {
    return __ldg(reinterpret_cast<const uint4*>(p));
  } else if constexpr (W == 8) {
    const auto* q = reinterpret_cast<const uint2*>(p);
    const uint2 lo = __ldg(q), hi = __ldg(q + 1);
    return make_uint4(lo.x, lo.y, hi.x, hi.y);
  } else if constexpr (W == 4) {
    const auto* q = reinterpret_cast<const unsigned*>(p);
    return make_uint4(__ldg(q), __ldg(q + 1), __ldg(q + 2), __ldg(q + 3));
  } else {
    Vec16<uint8_t> r;
#pragma unroll
    for (int k = 0; k < 16; k += W) {
      if constexpr (W == 2) {
        const uint16_t h = __ldg(reinterpret_cast<const unsigned short*>(p + k));
        r.e[k] = uint8_t(h);
        r.e[k + 1] = uint8_t(h >> 8);
      } else {
        r.e[k] = __ldg(reinterpret_cast<const unsigned char*>(p + k));
      }
    }
    return r.v;
  }
}

template <int W> __device__ __forceinline__ void store16(std::byte* p, uint4 v) {
  if constexpr (W == 16) {
    *reinterpret_cast<uint4*>(p) = v;
  } else if constexpr (W == 8) {
    auto* q = reinterpret_cast<uint2*>(p);
    q[0] = make_uint2(v.x, v.y);
    q[1] = make_uint2(v.z, v.w);
  } else if constexpr (W == 4) {
    auto* q = reinterpret_cast<unsigned*>(p);
    q[0] = v.x;
    q[1] = v.y;
    q[2] = v.z;
    q[3] = v.w;
  } else {
    Vec16<uint8_t> r;
    r.v = v;
#pragma unroll
    for (int k = 0; k < 16; k += W) {
      if constexpr (W == 2)
        *reinterpret_cast<uint16_t*>(p + k) = uint16_t(r.e[k] | (r.e[k + 1] << 8));
      else
        *reinterpret_cast<uint8_t*>(p + k) = r.e[k];
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The tile.

struct Geometry {
  const std::byte* src;
  std::byte* dst;
  const std::byte* scales;
  uint64_t experts, A, B, col_begin, cols;
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
  static_assert(ROW % 128 == 0, "a tile row must span whole 128-byte bank windows");
  static_assert(NVO % 8 == 0, "eight lanes write one 128-byte piece of an output row");
  static_assert(TJ % 4 == 0, "a warp reads four columns");
  static_assert(LOADS * THREADS == TA * NVI && STORES * THREADS == TJ * NVO,
                "every thread moves the same number of vectors");

  // Byte offset of element (a, j) in the tile. Conflict check of the read phase: a warp reads
  // rows a = (8 h + l % 8) VO + k for its lanes l (h, k fixed) and columns j = 4 g + l / 8. The
  // four columns are 4 S <= 16 contiguous bytes of one chunk (S <= 4), and the swizzle puts the
  // eight rows in eight different chunks of the window: distinct banks. For S = 8 a 64-bit
  // access is served per half-warp, whose two columns fill one chunk: again eight chunks.
  // Vector stores write a row's eight chunks of a window, which the XOR only permutes.
  __device__ static __forceinline__ int offset(int a, int j) {
    const int byte = j * S;
    return a * ROW + ((((byte >> 4) ^ (a / VO)) & 7) | ((byte >> 4) & ~7)) * 16 + (byte & 15);
  }
};

/// One 16-byte input vector, element by element where it crosses the matrix edge (zeros outside).
template <class In, int W>
__device__ __forceinline__ uint4 load_vector(const std::byte* q, bool row_ok, int64_t cols_left) {
  constexpr int VI = 16 / int(sizeof(In));
  if (row_ok && cols_left >= VI)
    return load16<W>(q);
  Vec16<In> t;
#pragma unroll
  for (int k = 0; k < VI; ++k)
    t.e[k] = (row_ok && k < cols_left) ? reinterpret_cast<const In*>(q)[k] : In(0);
  return t.v;
}

/// Global -> shared. A thread's vectors lie in one column of vectors, RSTEP rows apart, so one
/// pointer and one stride address them. Inside the matrix, with pieces of 4 bytes or more, all
/// of a thread's loads are issued before the first shared-memory store; at the edges and with
/// 1- or 2-byte pieces (one register per piece) the vectors go one at a time, which keeps the
/// register count, and with it the occupancy, of the fast path.
template <class Op, int TA, int TJ, int W>
__device__ __forceinline__ void load_tile(const Geometry& g, const std::byte* src_e, uint64_t a0,
                                          uint64_t j0, std::byte* smem) {
  using T = Tile<Op, TA, TJ>;
  using In = typename T::In;
  constexpr int RSTEP = THREADS / T::NVI;
  const int cv = threadIdx.x % T::NVI, a_first = threadIdx.x / T::NVI;
  const int64_t rows_left = int64_t(g.A - a0) - a_first;
  const int64_t cols_left = int64_t(g.cols - j0) - int64_t(cv) * T::VI;
  const uint64_t pitch = g.B * T::S;
  const std::byte* p = src_e + (a0 + a_first) * pitch + (g.col_begin + j0 + cv * T::VI) * T::S;
  if constexpr (W >= 4) {
    if (rows_left > (T::LOADS - 1) * RSTEP && cols_left >= T::VI) {
      uint4 v[T::LOADS];
#pragma unroll
      for (int r = 0; r < T::LOADS; ++r)
        v[r] = load16<W>(p + uint64_t(r * RSTEP) * pitch);
#pragma unroll
      for (int r = 0; r < T::LOADS; ++r)
        *reinterpret_cast<uint4*>(smem + T::offset(a_first + r * RSTEP, cv * T::VI)) = v[r];
      return;
    }
  }
#pragma unroll 1
  for (int r = 0; r < T::LOADS; ++r) {
    const uint4 v =
        load_vector<In, W>(p + uint64_t(r * RSTEP) * pitch, r * RSTEP < rows_left, cols_left);
    *reinterpret_cast<uint4*>(smem + T::offset(a_first + r * RSTEP, cv * T::VI)) = v;
  }
}

/// Output vector r of this thread, gathered from the tile through the element operation.
template <class Op, int TA, int TJ>
__device__ __forceinline__ uint4 gather(const Op& op, const std::byte* smem, int av, int j) {
  using T = Tile<Op, TA, TJ>;
  Vec16<typename T::Out> o;
#pragma unroll
  for (int k = 0; k < T::VO; ++k)
    o.e[k] = op(*reinterpret_cast<const typename T::In*>(smem + T::offset(av * T::VO + k, j)));
  return o.v;
}

/// Shared -> global through the element operation. Eight lanes write 128 contiguous bytes of one
/// output row (vectors av = 8 h .. 8 h + 7), a warp four rows; a thread's vectors lie in one
/// column of vectors, JSTEP output rows apart.
template <class Op, int TA, int TJ, int W>
__device__ __forceinline__ void store_tile(const Geometry& g, const Op& op, std::byte* dst_e,
                                           uint64_t a0, uint64_t j0, const std::byte* smem) {
  using T = Tile<Op, TA, TJ>;
  using Out = typename T::Out;
  constexpr int GROUPS = T::NVO / 8; // warps side by side along one output row
  constexpr int WARPS = THREADS / 32;
  static_assert(WARPS % GROUPS == 0, "a thread's vectors must stay in one column");
  constexpr int JSTEP = WARPS / GROUPS * 4;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int av = (warp % GROUPS) * 8 + lane % 8;
  const int j_first = (warp / GROUPS) * 4 + lane / 8;
  const int64_t rows_left = int64_t(g.cols - j0) - j_first;
  const uint64_t ga = a0 + uint64_t(av) * T::VO;
  const int64_t a_left = int64_t(g.A) - int64_t(ga);
  const uint64_t pitch = g.A * T::D;
  std::byte* p = dst_e + (j0 + j_first) * pitch + ga * T::D;
  if (rows_left > (T::STORES - 1) * JSTEP && a_left >= T::VO) {
#pragma unroll
    for (int r = 0; r < T::STORES; ++r)
      store16<W>(p + uint64_t(r * JSTEP) * pitch,
                 gather<Op, TA, TJ>(op, smem, av, j_first + r * JSTEP));
    return;
  }
#pragma unroll 1
  for (int r = 0; r < T::STORES && r * JSTEP < rows_left; ++r) {
    Vec16<Out> o;
    o.v = gather<Op, TA, TJ>(op, smem, av, j_first + r * JSTEP);
    std::byte* q = p + uint64_t(r * JSTEP) * pitch;
    if (a_left >= T::VO) {
      store16<W>(q, o.v);
    } else {
#pragma unroll
      for (int k = 0; k < T::VO; ++k)
        if (k < a_left)
          reinterpret_cast<Out*>(q)[k] = o.e[k];
    }
  }
}

template <class Op, int TA, int TJ>
__device__ __forceinline__ void load_tile_any(int width, const Geometry& g, const std::byte* src_e,
                                              uint64_t a0, uint64_t j0, std::byte* smem) {
  constexpr int S = Tile<Op, TA, TJ>::S;
  if (width == 16)
    return load_tile<Op, TA, TJ, 16>(g, src_e, a0, j0, smem);
  if constexpr (S <= 8)
    if (width == 8)
      return load_tile<Op, TA, TJ, 8>(g, src_e, a0, j0, smem);
  if constexpr (S <= 4)
    if (width == 4)
      return load_tile<Op, TA, TJ, 4>(g, src_e, a0, j0, smem);
  if constexpr (S <= 2)
    if (width == 2)
      return load_tile<Op, TA, TJ, 2>(g, src_e, a0, j0, smem);
  if constexpr (S <= 1)
    return load_tile<Op, TA, TJ, 1>(g, src_e, a0, j0, smem);
}

template <class Op, int TA, int TJ>
__device__ __forceinline__ void store_tile_any(int width, const Geometry& g, const Op& op,
                                               std::byte* dst_e, uint64_t a0, uint64_t j0,
                                               const std::byte* smem) {
  constexpr int D = Tile<Op, TA, TJ>::D;
  if (width == 16)
    return store_tile<Op, TA, TJ, 16>(g, op, dst_e, a0, j0, smem);
  if constexpr (D <= 8)
    if (width == 8)
      return store_tile<Op, TA, TJ, 8>(g, op, dst_e, a0, j0, smem);
  if constexpr (D <= 4)
    if (width == 4)
      return store_tile<Op, TA, TJ, 4>(g, op, dst_e, a0, j0, smem);
  if constexpr (D <= 2)
    if (width == 2)
      return store_tile<Op, TA, TJ, 2>(g, op, dst_e, a0, j0, smem);
  if constexpr (D <= 1)
    return store_tile<Op, TA, TJ, 1>(g, op, dst_e, a0, j0, smem);
}

/// One block, one tile: blockIdx.x enumerates the tiles of a matrix (columns fastest), blockIdx.y
/// and blockIdx.z the experts (z only past 65535 experts). No loops, so the compiler has no
/// loop-invariant addresses to keep live across tiles.
template <class Op, int TA, int TJ, int MIN_BLOCKS>
__global__ void __launch_bounds__(THREADS, MIN_BLOCKS)
    transpose_fold_kernel(Geometry g, uint32_t tiles_j, int load_width, int store_width) {
  using T = Tile<Op, TA, TJ>;
  __shared__ __align__(128) std::byte smem[T::BYTES];
  const uint64_t e = uint64_t(blockIdx.z) * MAX_GRID_Y + blockIdx.y;
  if (e >= g.experts)
    return;
  const uint64_t j0 = uint64_t(blockIdx.x % tiles_j) * TJ;
  const uint64_t a0 = uint64_t(blockIdx.x / tiles_j) * TA;
  Op op;
  op.set_expert(g.scales, e);
  const std::byte* src_e = g.src + e * g.A * g.B * T::S;
  std::byte* dst_e = g.dst + e * g.cols * g.A * T::D;
  load_tile_any<Op, TA, TJ>(load_width, g, src_e, a0, j0, smem);
  __syncthreads();
  store_tile_any<Op, TA, TJ>(store_width, g, op, dst_e, a0, j0, smem);
}

// ---------------------------------------------------------------------------------------------
// Host side: launch configuration and dtype dispatch.

/// The widest piece (16, 8, 4, 2 or 1 bytes) that divides the base address and every stride.
int access_width(const std::byte* base, uint64_t pitch_bytes, uint64_t offset_bytes) {
  const uint64_t bits = reinterpret_cast<uintptr_t>(base) | pitch_bytes | offset_bytes | 16;
  return int(bits & (~bits + 1)); // lowest set bit
}

/// MIN_BLOCKS caps the registers (65536 / (256 * MIN_BLOCKS)) so that that many tiles stay in
/// flight per SM; the cap is set per shape so that no variant spills.
template <class Op, int TA, int TJ, int MIN_BLOCKS = 6>
cudaError_t launch_tiles(const TransposeArgs& a, cudaStream_t stream) {
  using T = Tile<Op, TA, TJ>;
  const uint64_t tiles_j = (a.cols + TJ - 1) / TJ, tiles_a = (a.A + TA - 1) / TA;
  if (tiles_j * tiles_a > uint64_t(INT_MAX) || a.experts > uint64_t(MAX_GRID_Y) * 65535)
    return cudaErrorInvalidConfiguration;
  const unsigned experts_y = unsigned(std::min<uint64_t>(a.experts, MAX_GRID_Y));
  const dim3 grid(unsigned(tiles_j * tiles_a), experts_y,
                  unsigned((a.experts + experts_y - 1) / experts_y));
  const Geometry g{a.src, a.dst, a.scales, a.experts, a.A, a.B, a.col_begin, a.cols};
  const int load_width = access_width(a.src, a.B * T::S, a.col_begin * T::S);
  const int store_width = access_width(a.dst, a.A * T::D, 0);
  auto* kernel = transpose_fold_kernel<Op, TA, TJ, MIN_BLOCKS>;
  // Ask for the largest shared-memory carveout so that the tiles never limit occupancy.
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                         cudaSharedmemCarveoutMaxShared);
  if (err != cudaSuccess)
    return err;
  kernel<<<grid, THREADS, 0, stream>>>(g, uint32_t(tiles_j), load_width, store_width);
  return cudaGetLastError();
}

// Tile shapes: input rows of 128 or 256 bytes, output rows of 128 to 512 bytes, 8 to 16 KB per
// tile: 256 threads each keep two to four 16-byte loads in flight.
template <class Op>
cudaError_t launch_op(const TransposeArgs& a, cudaStream_t stream, CudaTileVariant variant) {
  constexpr int S = sizeof(typename Op::In), D = sizeof(typename Op::Out);
  if constexpr (S == 1)
    return launch_tiles<Op, 128, 128>(a, stream);
  else if constexpr (S == 2 && D == 2)
    return variant == CudaTileVariant::tall ? launch_tiles<Op, 128, 64, 4>(a, stream)
                                            : launch_tiles<Op, 64, 64>(a, stream);
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
