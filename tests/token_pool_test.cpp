// token_pool_test.cpp: token_pool.h. Lanes drawing from one pool never have more items in flight
// than it holds, one lane alone can have them all, a task that waits for a token gives its
// thread to other work, and every waiter is woken in the end (no token is lost), whatever the
// interleaving. Randomized: the seed is printed.
#include "token_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <random>
#include <thread>
#include <vector>

#include <tbb/global_control.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>
#include <tbb/task_group.h>

namespace shardshift {
namespace {

// Aborts the test binary with a message if the body has not finished in time (a lost wakeup
// would otherwise hang it).
class Watchdog {
public:
  explicit Watchdog(std::chrono::seconds limit) {
    thread_ = std::thread([this, limit] {
      const auto end = std::chrono::steady_clock::now() + limit;
      while (!done_.load()) {
        if (std::chrono::steady_clock::now() > end) {
          std::fprintf(stderr, "TokenPool test: no progress for %lld s (a waiter never woken)\n",
                       static_cast<long long>(limit.count()));
          std::abort();
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    });
  }
  ~Watchdog() {
    done_.store(true);
    thread_.join();
  }

private:
  std::atomic<bool> done_{false};
  std::thread thread_;
};

void spin_for(std::chrono::microseconds d) {
  const auto end = std::chrono::steady_clock::now() + d;
  while (std::chrono::steady_clock::now() < end) {
  }
}

TEST(TokenPool, ManyTasksNeverHoldMoreThanThePoolAndAllFinish) {
  const unsigned seed = std::random_device{}();
  std::printf("seed %u\n", seed);
  Watchdog watchdog(std::chrono::seconds(60));
  // Four threads even on a machine with fewer cores, so that tasks contend for the tokens.
  tbb::global_control threads(tbb::global_control::max_allowed_parallelism, 4);
  tbb::task_arena arena(4);
  for (unsigned total : {1u, 3u, 8u}) {
    TokenPool pool(total);
    std::atomic<unsigned> held{0}, most{0}, done{0};
    arena.execute([&] {
      tbb::parallel_for(0, 400, [&](int i) {
        pool.acquire();
        const unsigned now = held.fetch_add(1) + 1;
        unsigned seen = most.load();
        while (now > seen && !most.compare_exchange_weak(seen, now)) {
        }
        std::mt19937 rng(seed + static_cast<unsigned>(i));
        spin_for(std::chrono::microseconds(rng() % 200));
        held.fetch_sub(1);
        pool.release();
        done.fetch_add(1);
      });
    });
    EXPECT_EQ(done.load(), 400u) << "total " << total;
    EXPECT_LE(most.load(), total) << "total " << total;
    EXPECT_GE(pool.peak(), most.load()); // the pool counts what the tasks saw, or more
    EXPECT_LE(pool.peak(), total);
    // With 4 threads and 400 tasks the pool runs dry whenever it holds fewer than 4.
    if (total <= 3)
      EXPECT_EQ(pool.peak(), total) << "total " << total;
  }
}

TEST(TokenPool, OneLaneAloneCanTakeEveryToken) {
  TokenPool pool(6);
  for (int i = 0; i < 6; ++i)
    pool.acquire(); // none of these waits: the pool has them all
  EXPECT_EQ(pool.peak(), 6u);
  for (int i = 0; i < 6; ++i)
    pool.release();
}

TEST(TokenPool, AWaitingTaskGivesItsThreadToOtherWork) {
  // One thread: a task that waits for the only token must let the task that will give it back
  // run on that same thread, or this never ends.
  Watchdog watchdog(std::chrono::seconds(30));
  tbb::task_arena arena(1);
  TokenPool pool(1);
  std::atomic<bool> released{false};
  std::vector<int> order;
  arena.execute([&] {
    pool.acquire(); // held by "the first lane"
    tbb::task_group group;
    group.run([&] {
      pool.acquire(); // waits: suspended until the release below
      order.push_back(2);
      pool.release();
    });
    group.run([&] {
      order.push_back(1);
      released.store(true);
      pool.release();
    });
    group.wait();
  });
  EXPECT_TRUE(released.load());
  ASSERT_EQ(order.size(), 2u);
  EXPECT_EQ(order[0], 1);
  EXPECT_EQ(order[1], 2);
}

TEST(TokenPool, AThreadOutsideOneTbbSleepsUntilATokenComesBack) {
  Watchdog watchdog(std::chrono::seconds(30));
  TokenPool pool(1);
  pool.acquire();
  std::atomic<bool> got{false};
  std::thread waiter([&] {
    pool.acquire();
    got.store(true);
    pool.release();
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(got.load()); // still waiting: the only token is held here
  pool.release();
  waiter.join();
  EXPECT_TRUE(got.load());
}

} // namespace
} // namespace shardshift
