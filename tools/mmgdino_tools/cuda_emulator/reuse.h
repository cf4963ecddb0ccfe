// Reuse distances of a stream of 32-byte sectors: for every touch, how many distinct other sectors were touched
// since the same sector's previous touch (its LRU stack distance). A fully associative LRU cache of C sectors hits
// exactly the touches whose distance is below C, so one pass answers every cache size: the trace reports the
// histogram and gpu_model reads each target's L2 hits from it (its table holds the L2 sizes).
//
// Distances are counted with a Fenwick tree over time slots that holds a 1 at each sector's latest touch: the
// distance of a touch is the number of 1s after its sector's previous slot. When the slots run out, the live ones
// are renumbered in order (amortized O(1) per touch); each touch costs O(log slots).
#ifndef SIMT_REUSE_H_
#define SIMT_REUSE_H_

#include <stdint.h>
#include <stdio.h>

#include <algorithm>
#include <unordered_map>
#include <utility>
#include <vector>

namespace simt {

class ReuseDistances {
 public:
  // Bucket width 4096 sectors (128 KiB): every L2 size the model uses is a multiple, so hits are exact for them.
  static constexpr uint64_t kBucketSectors = 4096;
  static constexpr size_t kBuckets = 1024;  // up to 128 MiB; longer distances count as beyond

  void touch(uint64_t sector) {
    if (now_ == tree_.size()) compact();
    auto [it, first] = last_.try_emplace(sector, now_);
    if (first) {
      ++cold_;
    } else {
      const uint64_t distance = last_.size() - prefix(it->second);
      const uint64_t bucket = distance / kBucketSectors;
      if (bucket < kBuckets) {
        if (bucket >= counts_.size()) counts_.resize(bucket + 1, 0);
        ++counts_[bucket];
      } else {
        ++beyond_;
      }
      add(it->second, -1);
      it->second = now_;
    }
    add(now_, +1);
    ++now_;
  }

  // {"bucket_sectors": 4096, "counts": [touches with distance in [i*4096, (i+1)*4096) ...], "beyond": n,
  //  "cold": first touches}
  void write_json(FILE* f) const {
    fprintf(f, "{\"bucket_sectors\": %llu, \"counts\": [", static_cast<unsigned long long>(kBucketSectors));
    for (size_t i = 0; i < counts_.size(); ++i) {
      fprintf(f, "%s%llu", i ? ", " : "", static_cast<unsigned long long>(counts_[i]));
    }
    fprintf(f, "], \"beyond\": %llu, \"cold\": %llu}", static_cast<unsigned long long>(beyond_),
            static_cast<unsigned long long>(cold_));
  }

 private:
  // Number of latest touches at slots <= slot.
  uint64_t prefix(uint64_t slot) const {
    uint64_t sum = 0;
    for (uint64_t i = slot + 1; i > 0; i -= i & (~i + 1)) sum += tree_[i - 1];
    return sum;
  }
  void add(uint64_t slot, int delta) {
    for (uint64_t i = slot + 1; i <= tree_.size(); i += i & (~i + 1)) tree_[i - 1] += delta;
  }
  // Renumbers the live slots 0..n-1 in time order and rebuilds the tree with room for as many touches again.
  void compact() {
    std::vector<std::pair<uint64_t, uint64_t>> live;  // (slot, sector)
    live.reserve(last_.size());
    for (const auto& [sector, slot] : last_) live.emplace_back(slot, sector);
    std::sort(live.begin(), live.end());
    tree_.assign(std::max<size_t>(size_t{1} << 20, 2 * live.size()), 0);
    for (size_t i = 0; i < live.size(); ++i) {
      last_[live[i].second] = i;
      tree_[i] = 1;
    }
    for (size_t i = 1; i <= tree_.size(); ++i) {  // O(n) Fenwick build from the 1s
      const size_t parent = i + (i & (~i + 1));
      if (parent <= tree_.size()) tree_[parent - 1] += tree_[i - 1];
    }
    now_ = live.size();
  }

  std::unordered_map<uint64_t, uint64_t> last_;  // sector -> slot of its latest touch
  std::vector<int64_t> tree_;
  uint64_t now_ = 0;
  std::vector<uint64_t> counts_;
  uint64_t beyond_ = 0, cold_ = 0;
};

}  // namespace simt

#endif  // SIMT_REUSE_H_
