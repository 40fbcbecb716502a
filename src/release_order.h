// release_order.h: when the input pages of a file's items may be dropped, whichever lane runs
// the items.
//
// A range of input read by several items of a file (the column chunks of one large expert, the
// row chunks of a stacked expert, the chunks of an expert being quantized) is released by the
// last item cut from it, once that item is written. One lane writes its items in order, so every
// earlier reader has finished by then. Lanes that help with one file (emitter.h) run its items
// in separate pipelines: the last chunk could be written, and its range released, while an
// earlier chunk was still transposing on another lane, which then faulted the pages back in for
// good; the mapped input grew past the budget (500 MB at --max-memory 32MiB). So each item names
// the first item that read what it releases (Item::release_after), and its ranges wait until
// every item from that one to it is given back. Ranges no other item read go at once: waiting on
// unrelated items would hold the pages of every item finished behind a slow one.
// Thread-safety: every member may be called from any thread.
#pragma once

#include "work_item.h"

#include <cstdint>
#include <mutex>
#include <set>
#include <vector>

namespace shardshift {

class ReleaseOrder {
public:
  /// Item `seq` was cut (each seq once, before it is given back).
  void cut(uint64_t seq) {
    std::lock_guard lock(mu_);
    running_.insert(seq);
  }

  /// Item `seq` is given back with the input `ranges` it leaves done, which items `after` to
  /// `seq` read: returns what may be released now, of it and of items that waited for it.
  std::vector<InputRange> given_back(uint64_t seq, uint64_t after, std::vector<InputRange> ranges) {
    std::lock_guard lock(mu_);
    running_.erase(seq);
    if (!ranges.empty())
      waiting_.push_back({after, seq, std::move(ranges)});
    std::vector<InputRange> now;
    for (auto it = waiting_.begin(); it != waiting_.end();) {
      const auto reader = running_.lower_bound(it->after); // the first still running from after
      if (reader != running_.end() && *reader < it->seq) {
        ++it;
        continue;
      }
      now.insert(now.end(), it->ranges.begin(), it->ranges.end());
      it = waiting_.erase(it);
    }
    return now;
  }

private:
  struct Waiting {
    uint64_t after = 0, seq = 0;
    std::vector<InputRange> ranges;
  };
  std::mutex mu_;
  std::set<uint64_t> running_;   ///< cut and not yet given back
  std::vector<Waiting> waiting_; ///< given back, an earlier reader of its ranges still running
};

} // namespace shardshift
