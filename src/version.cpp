// version.cpp: build_info(), from the headers CMake generates (the configuration at configure
// time, the git revision before each build) and what the machine reports at run time.
#include "shardshift/version.h"

#include "adapter.h"
#include "coordinator.h"
#include "cuda_transform.h"
#include "git_revision.h"
#include "transpose.h"
#include "version_config.h"

namespace shardshift {

BuildInfo build_info() {
  BuildInfo info;
  info.version = SHARDSHIFT_VERSION_STRING;
  info.git_revision = SHARDSHIFT_GIT_REVISION;
  info.build_type = SHARDSHIFT_BUILD_TYPE;
  // transpose_cpu.cpp compiles the AVX2 and AVX-512 kernels on every x86 build (function
  // target attributes, run-time dispatch); elsewhere only the portable one exists.
  info.simd_compiled.push_back(simd_level_name(SimdLevel::portable));
#if defined(__x86_64__) || defined(__i386__)
  info.simd_compiled.push_back(simd_level_name(SimdLevel::avx2));
  info.simd_compiled.push_back(simd_level_name(SimdLevel::avx512));
#endif
  info.simd_running = simd_level_name(detect_simd_level());
#ifdef SHARDSHIFT_HAVE_CUDA
  info.cuda = true;
  info.cuda_architectures = SHARDSHIFT_CUDA_ARCHITECTURES;
#endif
  info.cuda_devices = CudaTransformer::device_count();
  for (std::string_view model : adapter_models())
    info.models.emplace_back(model);
  info.mpi = coordinates_through_mpi(RankInfo{0, 2, "Open MPI", true});
  return info;
}

} // namespace shardshift
