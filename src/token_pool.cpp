// token_pool.cpp: see token_pool.h. A waiting task is suspended with tbb::task::suspend and
// resumed by the release that hands it a token; a thread outside oneTBB waits on a condition.
#include "token_pool.h"

#include <algorithm>
#include <condition_variable>

#include <tbb/task.h>
#include <tbb/task_arena.h>

namespace shardshift {

namespace {

void resume_task(void* tag) { tbb::task::resume(static_cast<tbb::task::suspend_point>(tag)); }

// A thread oneTBB does not know waits here for its token.
struct Sleeper {
  std::mutex mu;
  std::condition_variable cv;
  bool woken = false;
};

void wake_sleeper(void* p) {
  auto* s = static_cast<Sleeper*>(p);
  std::lock_guard lock(s->mu);
  s->woken = true;
  s->cv.notify_one();
}

} // namespace

void TokenPool::acquire() {
  {
    std::lock_guard lock(mu_);
    if (free_ > 0) {
      --free_;
      peak_ = std::max(peak_, total_ - free_);
      return;
    }
  }
  if (tbb::this_task_arena::current_thread_index() < 0) {
    Sleeper s;
    {
      std::lock_guard lock(mu_);
      if (free_ > 0) {
        --free_;
        peak_ = std::max(peak_, total_ - free_);
        return;
      }
      waiters_.push_back({wake_sleeper, &s});
    }
    std::unique_lock lock(s.mu);
    s.cv.wait(lock, [&] { return s.woken; });
    return;
  }
  // Checked again under the lock once suspended: a token given back in between is taken at once.
  tbb::task::suspend([this](tbb::task::suspend_point tag) {
    std::unique_lock lock(mu_);
    if (free_ > 0) {
      --free_;
      peak_ = std::max(peak_, total_ - free_);
      lock.unlock();
      tbb::task::resume(tag);
      return;
    }
    waiters_.push_back({resume_task, tag});
  });
}

void TokenPool::release() {
  Waiter next{};
  {
    std::lock_guard lock(mu_);
    if (waiters_.empty()) {
      ++free_;
      return;
    }
    next = waiters_.front(); // the token goes to it: free_ stays
    waiters_.pop_front();
  }
  next.wake(next.tag);
}

unsigned TokenPool::peak() const {
  std::lock_guard lock(mu_);
  return peak_;
}

} // namespace shardshift
