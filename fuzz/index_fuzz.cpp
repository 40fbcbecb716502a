// index_fuzz.cpp: the reader of model.safetensors.index.json (parse_index) on arbitrary text.
//
// Any input must give an Index or an error. An Index must have unique tensor names, and the text
// shardshift writes for its weight map must read back to the same map.
#include "shardshift/safetensors.h"

#include "fuzz_support.h"

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>

using namespace shardshift;
using fuzz::check;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto parsed = parse_index("fuzz/model.safetensors.index.json", text);
  if (!parsed.ok()) {
    check(!parsed.status().message().empty(), "an error without a message");
    return 0;
  }
  std::map<std::string, std::string> weight_map(parsed->weight_map.begin(),
                                                parsed->weight_map.end());
  check(weight_map.size() == parsed->weight_map.size(), "a tensor listed twice was accepted");

  auto written = index_json(0, weight_map);
  check(written.ok(), "index_json refuses a weight map parse_index accepted");
  auto reread = parse_index("rewritten/model.safetensors.index.json", *written);
  check(reread.ok(), "the index shardshift writes does not parse");
  std::map<std::string, std::string> again(reread->weight_map.begin(), reread->weight_map.end());
  check(again == weight_map, "round trip changed the weight map");
  return 0;
}
