// transpose_cuda.h: the transpose-fold of transpose.h as a CUDA kernel on device buffers. The
// CudaTransformer (cuda_transformer.cu) stages chunks through it; benchmarks call it directly.
// Only translation units built against the CUDA toolkit include this header (it names
// cudaStream_t); it pulls in no simdjson.
// Thread-safety: launch_transpose_fold() may be called from any thread on any stream.
#pragma once

#include "transpose.h"

#include <cuda_runtime_api.h>

namespace shardshift {

/// Tile shape of the 2-byte to 2-byte kernels: `standard` (128 x 64 elements) is what run()
/// uses; `small` (64 x 64, half the bytes in flight per block) is kept so that perf/cuda_bench can
/// compare them.
enum class CudaTileVariant { standard = 0, small = 1 };

/// Enqueues the transpose-fold of `args` on `stream`. args.src, args.dst and args.scales are
/// device pointers (any alignment: accesses narrow from 16 bytes down to the element size when
/// the pointers, the row pitches or col_begin are not 16-byte aligned). Returns the launch error;
/// cudaSuccess without a launch when there is nothing to do.
/// REQUIRES: check_transpose_supported() accepts the dtypes; col_begin + cols <= B.
cudaError_t launch_transpose_fold(const TransposeArgs& args, cudaStream_t stream,
                                  CudaTileVariant variant = CudaTileVariant::standard);

} // namespace shardshift
