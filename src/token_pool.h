// token_pool.h: the items in flight of all writer lanes, counted against one memory budget.
//
// Each item a lane emits holds at most one chunk buffer and one chunk of mapped input
// (pipeline.h), so the budget is a number of items in flight: writers * tokens. With a fixed
// share per lane, the lane writing the largest file ends alone with its share while the others'
// shares, and the threads, sit idle (PERFORMANCE.md, "The last file written alone"). Lanes whose
// files are filled by several threads (FillMode::mapped) draw from one pool instead: a lane may
// have more items in flight than its share while others have fewer, and the items of a lane
// that has run out of files go to those still writing.
//
// A lane's emitter takes a token before emitting an item and the item's last step gives it
// back. A lane that finds none suspends its oneTBB task (the thread goes on with other work)
// until one is given back; tokens go to waiting lanes first come, first served. Every item in
// flight gives its token back (a failed item too), so every waiter is woken.
// Thread-safety: all members are thread-safe.
#pragma once

#include <deque>
#include <mutex>

namespace shardshift {

class TokenPool {
public:
  explicit TokenPool(unsigned tokens) : free_(tokens), total_(tokens) {}
  TokenPool(const TokenPool&) = delete;
  TokenPool& operator=(const TokenPool&) = delete;

  /// Takes a token. REQUIRES: called within a oneTBB task (a pipeline stage), which is suspended
  /// while none is free; on a thread oneTBB does not know, the thread sleeps instead.
  void acquire();
  /// Gives a token back: to the lane that has waited longest, or to the pool.
  void release();

  unsigned total() const { return total_; }
  /// The most tokens ever taken at once (for tests).
  unsigned peak() const;

private:
  mutable std::mutex mu_;
  unsigned free_;
  const unsigned total_;
  unsigned peak_ = 0;
  /// Lanes waiting: each entry is woken with the token handed to it.
  struct Waiter {
    void (*wake)(void*);
    void* tag;
  };
  std::deque<Waiter> waiters_;
};

} // namespace shardshift
