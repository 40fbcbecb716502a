// cpu_features.h: what this CPU's SIMD kernels may use, detected once (cpuid). The kernels'
// dispatch reads it; detect_simd_level() (transpose.h) caps it by SHARDSHIFT_SIMD.
// Thread-safety: cpu_features() is safe to call from any thread.
#pragma once

#include "transpose.h"

namespace shardshift {

struct CpuFeatures {
  SimdLevel level = SimdLevel::portable; ///< avx2 needs AVX2, FMA, F16C; avx512 also F/BW/VL/DQ
  bool avx512_bf16 = false;              ///< AVX512-BF16 (vcvtne2ps2bf16), with avx512
};

const CpuFeatures& cpu_features();

} // namespace shardshift
