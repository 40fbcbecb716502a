// cuda_floor.h: device-memory ceilings for cuda_bench that no library kernel provides.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

/// How a floor kernel lays its traffic out over threads.
enum class FloorLayout {
  /// each thread: one 16-byte load, two adjacent 16-byte stores (each store instruction covers
  /// every other 16 bytes of the warp's 1 KB)
  load16,
  /// each thread: one 8-byte load, one 16-byte store (each instruction contiguous over the warp),
  /// four in flight
  load8,
  /// as load8, eight in flight
  load8_deep,
  /// as load16, stores marked streaming (st.global.cs: evict first)
  load16_streaming,
};

/// Reads in_bytes (a multiple of 16, 16-byte aligned) and writes 2 * in_bytes at out, each byte
/// zero-extended to 16 bits: the read/write mix of FP8 -> BF16 dequantization, without its work.
cudaError_t launch_widen_floor(const void* in, void* out, uint64_t in_bytes, cudaStream_t stream,
                               FloorLayout layout = FloorLayout::load16);

/// An experiment for the library's rows kernel with the load8 layout: out[r][c] = BF16 of
/// E4M3 in[r][c] times scales[r / 128][c / 128] (F32), with only the fast path (finite non-zero
/// scales, no NaN code: weight-like data). C a multiple of 8, pointers 16-byte aligned.
cudaError_t launch_dequant_rows8(const void* in, const float* scales, void* out, uint64_t R,
                                 uint64_t C, cudaStream_t stream);
