// float_environment.h: the CPU kernels' one floating-point operation per element (a multiply)
// must be a plain IEEE operation: round to nearest even, subnormal inputs and results kept. A
// library built with -ffast-math sets flush-to-zero and denormals-are-zero for the whole process
// at load time; FloatEnvironmentGuard clears them (and any directed rounding) for the duration of
// a call and restores the caller's state.
// Thread-safety: the floating-point environment is per thread; a guard affects its own thread.
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

namespace shardshift {

class FloatEnvironmentGuard {
public:
#if defined(__x86_64__) || defined(__i386__)
  FloatEnvironmentGuard() : saved_(_mm_getcsr()) {
    if ((saved_ & NOT_IEEE) != 0)
      _mm_setcsr(saved_ & ~NOT_IEEE);
  }
  ~FloatEnvironmentGuard() {
    if ((saved_ & NOT_IEEE) != 0)
      _mm_setcsr(saved_);
  }
  FloatEnvironmentGuard(const FloatEnvironmentGuard&) = delete;
  FloatEnvironmentGuard& operator=(const FloatEnvironmentGuard&) = delete;

private:
  static constexpr unsigned NOT_IEEE = 0x8000u /*FTZ*/ | 0x6000u /*rounding*/ | 0x0040u /*DAZ*/;
  unsigned saved_;
#endif
};

} // namespace shardshift
