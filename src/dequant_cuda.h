// dequant_cuda.h: FP8 block dequantization (dequant.h) as CUDA kernels on device buffers, with
// the bits of dequant_cpu(). The CudaTransformer (cuda_transformer.cu) stages regions of the
// input through it (dequant_region.h); benchmarks and tests call it directly.
// Only translation units built against the CUDA toolkit include this header; it pulls in no
// simdjson.
// Thread-safety: launch_dequant() may be called from any thread on any stream.
#pragma once

#include "dequant.h"

#include <cuda_runtime_api.h>

#include <cstddef>

namespace shardshift {

/// Enqueues `args` on `stream`. args.src, args.scales and args.dst are device pointers (any
/// alignment; 16-byte aligned rows take the vector paths). Returns the launch error; cudaSuccess
/// without a launch when there is nothing to do.
/// REQUIRES: check_dequant_supported() accepts the dtypes; args.block is a power of two >= 64
/// (cudaErrorInvalidValue otherwise).
cudaError_t launch_dequant(const DequantArgs& args, cudaStream_t stream);

/// Enqueues args[0, n) on `stream`, in order, as launch_dequant() would each, but with as few
/// launches as the kernels allow: consecutive transposed FP8 calls into 16-bit results (a
/// chunk's stacked pieces) share one launch, so no piece's tail leaves the GPU half idle.
/// Returns the first launch error. REQUIRES: as launch_dequant() for each call, and the calls'
/// outputs do not overlap (a shared launch runs them in any order).
cudaError_t launch_dequant_batch(const DequantArgs* args, size_t n, cudaStream_t stream);

} // namespace shardshift
