// dequant_cuda.h: FP8 block dequantization (dequant.h) as CUDA kernels on device buffers, with
// the bits of dequant_cpu(). The CudaTransformer (cuda_transformer.cu) stages regions of the
// input through it (dequant_region.h); benchmarks and tests call it directly.
// Only translation units built against the CUDA toolkit include this header; it pulls in no
// simdjson.
// Thread-safety: launch_dequant() may be called from any thread on any stream.
#pragma once

#include "dequant.h"

#include <cuda_runtime_api.h>

namespace shardshift {

/// Enqueues `args` on `stream`. args.src, args.scales and args.dst are device pointers (any
/// alignment; 16-byte aligned rows take the vector paths). Returns the launch error; cudaSuccess
/// without a launch when there is nothing to do.
/// REQUIRES: check_dequant_supported() accepts the dtypes; args.block is a power of two >= 64
/// (cudaErrorInvalidValue otherwise).
cudaError_t launch_dequant(const DequantArgs& args, cudaStream_t stream);

} // namespace shardshift
