// header_fuzz.cpp: the safetensors header parser (parse_header) on arbitrary file bytes.
//
// Any input must give a Header or an error. A Header must describe the file exactly (tensors tile
// the data section in order, every name found by find()), and the header shardshift would write
// for those tensors must parse back to the same tensors over the same data.
#include "shardshift/safetensors.h"

#include "fuzz_support.h"

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

using namespace shardshift;
using fuzz::check;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::span<const std::byte> file(reinterpret_cast<const std::byte*>(data), size);
  auto parsed = parse_header("fuzz.safetensors", file);
  if (!parsed.ok()) {
    check(!parsed.status().message().empty(), "an error without a message");
    return 0;
  }
  const Header& h = *parsed;
  check(h.data_start == 8 + h.header_length && h.data_start <= size, "data_start");
  check(h.data_size() == size - h.data_start, "the tensors do not fill the data section");
  uint64_t cursor = 0;
  std::vector<PlannedTensor> planned;
  for (const TensorInfo& t : h.tensors) {
    check(t.begin == cursor && t.end >= t.begin, "the tensors do not tile the data section");
    cursor = t.end;
    check(h.find(t.name) == &t, "find() misses a tensor");
    planned.push_back({t.name, t.dtype, t.shape});
  }

  // Written again by build_header (metadata kept), over the same data bytes: the same tensors.
  auto rebuilt = build_header(planned, HeaderOptions{.metadata = h.metadata});
  check(rebuilt.ok(), "build_header refuses what parse_header accepted");
  std::string again = *rebuilt;
  again.append(reinterpret_cast<const char*>(data) + h.data_start, size - h.data_start);
  auto reparsed =
      parse_header("rebuilt.safetensors", std::as_bytes(std::span(again.data(), again.size())));
  check(reparsed.ok(), "a header from build_header does not parse");
  check(reparsed->tensors.size() == h.tensors.size() && reparsed->metadata == h.metadata,
        "round trip changed the tensor count or the metadata");
  for (size_t i = 0; i < h.tensors.size(); ++i) {
    const TensorInfo& a = h.tensors[i];
    const TensorInfo& b = reparsed->tensors[i];
    check(a.name == b.name && a.dtype == b.dtype && a.shape == b.shape && a.begin == b.begin &&
              a.end == b.end,
          "round trip changed a tensor");
  }
  return 0;
}
