// gpu_wait.h: the pipeline's way of waiting for the GPU. A thread that has queued a chunk's
// upload, kernel and download would otherwise sleep until the download is done (on the H200
// host, 61% of a GPU chunk's time on the thread; docs/PERFORMANCE.md, "The GPU's fixed cost").
// Instead its oneTBB task is suspended (tbb::task::suspend) and the thread goes on with other
// work of the arena: other chunks, the writer lanes' files. The stream's callback resumes the
// task, which may then go on on another thread of the arena.
// Thread-safety: the returned GpuWait may be called from any thread; each call is one wait.
#pragma once

#include "cuda_transform.h"

namespace shardshift {

/// A GpuWait (cuda_transform.h) that suspends the calling oneTBB task until it is woken.
/// REQUIRES: called, and the GpuWait used, within a oneTBB task (a pipeline stage). On a thread
/// oneTBB does not know, or with SHARDSHIFT_GPU_WAIT=block (for comparisons), it returns an
/// empty GpuWait: the thread sleeps on the stream.
GpuWait suspending_wait();

} // namespace shardshift
