// driver_files.h: handing the GPU driver's device files back before the process ends.
//
// A process that has used CUDA keeps the driver's files open (/dev/nvidiactl, /dev/nvidia-uvm,
// /dev/nvidiaN) until it exits, even after cudaDeviceReset, and the kernel's release of the
// unified-memory file takes about 40 ms on the H200 host: at exit, after the last byte is
// written and the summary printed, before the shell sees the process end (docs/PERFORMANCE.md,
// "The driver's files handed back"). The command-line tool, the device's one user, hands them
// back on the GPU's closing thread instead, beside the work. Each descriptor is pointed at
// /dev/null (dup2) rather than closed, so its number is not reused by a file of ours that the
// driver, were it still to use it, could then reach.
//
// After it, the process must make no CUDA call: the driver would find /dev/null.
// Thread-safety: safe to call from any thread; descriptors opened meanwhile under the prefixes
// may or may not be replaced.
#pragma once

#include <initializer_list>
#include <span>
#include <string_view>
#include <vector>

namespace shardshift {

/// The descriptors above 2 whose files' paths start with one of `prefixes` (as /proc/self/fd
/// reads them); none without /proc.
std::vector<int> files_under(std::initializer_list<std::string_view> prefixes);

/// Points every descriptor of files_under(prefixes) but those in `keep` at /dev/null, and
/// returns how many. Standard input, output and error are never touched.
unsigned release_files_under(std::initializer_list<std::string_view> prefixes,
                             std::span<const int> keep = {});

/// The GPU driver's files open now: the NVIDIA driver's (/dev/nvidia*) and WSL's (/dev/dxg).
std::vector<int> gpu_driver_files();
/// gpu_driver_files() as they were at the first call of this function in the process: called
/// before the process's first CUDA call, the files of other libraries (a monitoring one, say),
/// which the process's own use of the device must not hand back.
const std::vector<int>& gpu_driver_files_before_cuda();
/// Hands back the GPU driver's files but those in `before` (gpu_driver_files() taken before the
/// device was opened: another library's, such as a monitoring one, stay as they are).
unsigned release_gpu_driver_files(std::span<const int> before = {});

} // namespace shardshift
