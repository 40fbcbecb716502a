// gpu_wait.cpp: suspending_wait() on oneTBB's resumable tasks.
#include "gpu_wait.h"

#include <cstdlib>
#include <cstring>

#include <tbb/task.h>
#include <tbb/task_arena.h>

namespace shardshift {

namespace {

bool blocking_asked() {
  static const bool block = [] {
    const char* v = std::getenv("SHARDSHIFT_GPU_WAIT");
    return v && std::strcmp(v, "block") == 0;
  }();
  return block;
}

// Called by the device (a stream callback on a driver thread): only signals the scheduler.
void resume_task(void* token) {
  tbb::task::resume(static_cast<tbb::task::suspend_point>(token));
}

} // namespace

GpuWait suspending_wait() {
  if (blocking_asked() || tbb::this_task_arena::current_thread_index() < 0)
    return {};
  return [](const std::function<bool(GpuWake, void*)>& arm) {
    // The callable runs on this thread before it switches to other work; a wake that comes
    // before the switch is complete is one oneTBB expects.
    tbb::task::suspend([&arm](tbb::task::suspend_point tag) {
      if (!arm(resume_task, tag))
        tbb::task::resume(tag); // nothing will wake it: go on at once
    });
  };
}

} // namespace shardshift
