// release_order_test.cpp: the input a file's items leave done is released once no earlier reader
// of it runs, whichever order lanes give the items back in (src/release_order.h).
#include "release_order.h"

#include <gtest/gtest.h>

namespace shardshift {
namespace {

// Ranges told apart by their offset alone.
std::vector<InputRange> range(uint64_t offset) {
  return {{nullptr, offset, 4096}};
}

std::vector<uint64_t> offsets(const std::vector<InputRange>& ranges) {
  std::vector<uint64_t> out;
  for (const InputRange& r : ranges)
    out.push_back(r.offset);
  return out;
}

TEST(ReleaseOrder, ARangeWaitsForItsEarlierReadersOnly) {
  ReleaseOrder order;
  for (uint64_t seq = 0; seq < 6; ++seq)
    order.cut(seq);
  // Items 1, 2 and 3 are the column chunks of one expert: 3, the last, releases its input.
  // Given back first, it waits while 1 and 2 still read that input.
  EXPECT_TRUE(order.given_back(3, 1, range(300)).empty());
  // Item 4 read only its own input: released at once, though 1 and 2 still run.
  EXPECT_EQ(offsets(order.given_back(4, 4, range(400))), std::vector<uint64_t>{400});
  // Item 2 releases nothing; 1 still reads the expert.
  EXPECT_TRUE(order.given_back(2, 2, {}).empty());
  // Item 0 (the file's open) does not hold the expert back.
  EXPECT_TRUE(order.given_back(0, 0, {}).empty());
  // The last reader done: the expert's input goes with it.
  EXPECT_EQ(offsets(order.given_back(1, 1, {})), std::vector<uint64_t>{300});
  EXPECT_EQ(offsets(order.given_back(5, 5, range(500))), std::vector<uint64_t>{500});
}

TEST(ReleaseOrder, InOrderEveryRangeGoesWithItsItem) {
  ReleaseOrder order;
  for (uint64_t seq = 0; seq < 4; ++seq) {
    order.cut(seq);
    EXPECT_EQ(offsets(order.given_back(seq, seq == 3 ? 1 : seq, range(seq * 100))),
              std::vector<uint64_t>{seq * 100})
        << seq;
  }
}

} // namespace
} // namespace shardshift
