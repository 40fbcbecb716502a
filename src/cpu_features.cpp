// cpu_features.cpp: the CPU's SIMD features through cpuid, and the SHARDSHIFT_SIMD cap.
#include "cpu_features.h"

#include "simd_x86.h"

#include <algorithm>
#include <cstdlib>
#include <string_view>

#if SHARDSHIFT_X86
#include <cpuid.h>
#endif

namespace shardshift {

namespace {

CpuFeatures detect() {
  CpuFeatures f;
#if SHARDSHIFT_X86
  __builtin_cpu_init();
  // F16C through cpuid: clang's __builtin_cpu_supports does not know the name. (Every AVX2 CPU
  // has it, but the AVX2 kernels use it, so check.)
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C) != 0;
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
  if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    f.level = SimdLevel::avx512;
    f.avx512_bf16 = __builtin_cpu_supports("avx512bf16");
  } else if (avx2) {
    f.level = SimdLevel::avx2;
  }
#endif
  return f;
}

} // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = detect();
  return features;
}

SimdLevel detect_simd_level() {
  const SimdLevel best = cpu_features().level;
  // Read on every call (cheap next to a kernel call) so a test or a user can change the cap.
  const char* cap = std::getenv("SHARDSHIFT_SIMD");
  if (cap == nullptr)
    return best;
  const std::string_view name(cap);
  SimdLevel requested = best;
  if (name == "portable")
    requested = SimdLevel::portable;
  else if (name == "avx2")
    requested = SimdLevel::avx2;
  else if (name == "avx512")
    requested = SimdLevel::avx512;
  return std::min(best, requested);
}

const char* simd_level_name(SimdLevel level) {
  switch (level) {
  case SimdLevel::portable:
    return "portable";
  case SimdLevel::avx2:
    return "avx2";
  case SimdLevel::avx512:
    return "avx512";
  }
  return "unknown";
}

} // namespace shardshift
