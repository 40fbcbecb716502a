// version.h: what this build of shardshift is: its version, the revision it was built from, and
// the features compiled in (SIMD kernels, CUDA), with what the running machine can use of them.
// `shardshift --version` prints it; a program embedding the library can log it.
// Thread-safety: build_info() may be called from any thread.
#pragma once

#include <string>
#include <vector>

namespace shardshift {

struct BuildInfo {
  std::string version;      ///< "0.1.0": CMake's project(VERSION), the one place it is set
  std::string git_revision; ///< `git describe --always --dirty` at configure time, or "unknown"
  std::string build_type;   ///< CMAKE_BUILD_TYPE ("Release", "RelWithDebInfo"...)
  /// The CPU transpose kernels compiled in, lowest first: "portable", and on x86 "avx2" and
  /// "avx512" (always compiled there; the best one the CPU runs is picked at run time).
  std::vector<std::string> simd_compiled;
  /// The level the running CPU gets (cpuid, capped by SHARDSHIFT_SIMD when set).
  std::string simd_running;
  bool cuda = false;               ///< the CUDA transform stage is compiled in
  std::string cuda_architectures;  ///< its CUDA_ARCHITECTURES ("90"); empty without CUDA
  int cuda_devices = 0;            ///< usable CUDA devices now (0 without CUDA, driver or GPU)
  std::vector<std::string> models; ///< the model adapters ("diffusion_gemma", "gemma4_moe")
  bool mpi = false; ///< jobs of several ranks started by Open MPI's mpirun coordinate through MPI
};

/// This build's description. Queries the CPU and, with CUDA, the driver (cheap, but not free:
/// call it once).
BuildInfo build_info();

} // namespace shardshift
