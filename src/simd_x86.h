// simd_x86.h: what the CPU kernels' SIMD code needs on x86: the intrinsics, and per-function
// target attributes, so that one binary carries AVX2 and AVX-512 paths and picks one at run time
// (cpu_features.h) without -march. SHARDSHIFT_X86 is 0 elsewhere and the kernels stay scalar.
#pragma once

#if defined(__x86_64__) || defined(__i386__)
// GCC 12's AVX-512 intrinsics start from _mm512_undefined_*(), a self-initialised variable that
// -Wmaybe-uninitialized reports once inlined (GCC bug 105593, fixed in GCC 13). The warning is
// located in the header, so ignoring it there is enough.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#define SHARDSHIFT_X86 1
#define SHARDSHIFT_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define SHARDSHIFT_TARGET_AVX512                                                                   \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#define SHARDSHIFT_TARGET_AVX512_BF16                                                              \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")))
// The block helpers must be inlined into the tile loops: called, their 16 registers go through
// memory...
#define SHARDSHIFT_INLINE inline __attribute__((always_inline))
// ... and their fixed-count loops unrolled, so the arrays of registers stay in registers.
#define SHARDSHIFT_UNROLL _Pragma("GCC unroll 16")
#else
#define SHARDSHIFT_X86 0
#endif
