// cuda_floor.h: device-memory ceilings for cuda_bench that no library kernel provides.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

/// Reads in_bytes (a multiple of 16, 16-byte aligned) and writes 2 * in_bytes at out, each byte
/// zero-extended to 16 bits: the read/write mix of FP8 -> BF16 dequantization, without its work.
cudaError_t launch_widen_floor(const void* in, void* out, uint64_t in_bytes, cudaStream_t stream);
