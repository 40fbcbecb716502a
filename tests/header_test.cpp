// header_test.cpp: the hardened safetensors header parser, one test per rejection rule of
// docs/format.md plus the unusual files it must accept.
#include "shardshift/problems.h"
#include "shardshift/safetensors.h"

#include "test_support.h"

#include <algorithm>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

using testing::lines_of;
using testing::raw_safetensors;

const std::string PATH = "x.safetensors";

Result<Header> parse(const std::string& file) {
  return parse_header(PATH, std::as_bytes(std::span(file.data(), file.size())));
}

std::string entry(const std::string& name, const std::string& dtype, const std::string& shape,
                  uint64_t begin, uint64_t end) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape +
         ",\"data_offsets\":[" + std::to_string(begin) + "," + std::to_string(end) + "]}";
}

// Asserts the file is rejected with Errc::format, every line names the file, and the message
// contains every one of `needles`.
void expect_rejected(const std::string& file, const std::vector<std::string>& needles) {
  auto r = parse(file);
  ASSERT_FALSE(r.ok()) << "accepted a file that breaks a rule";
  EXPECT_EQ(r.status().code(), Errc::format);
  const std::string msg = r.status().message();
  for (const auto& line : lines_of(msg))
    EXPECT_EQ(line.rfind(PATH + ": ", 0), 0u) << line;
  for (const auto& n : needles)
    EXPECT_NE(msg.find(n), std::string::npos) << msg << "\n  lacks: " << n;
}

// ---- Rules 1-3: the length prefix ------------------------------------------------------------

TEST(HeaderRejects, FileShorterThanEightBytes) {
  expect_rejected("", {"shorter than the 8-byte"});
  expect_rejected("1234567", {"file is 7 bytes"});
}

TEST(HeaderRejects, HeaderLengthOverLimit) {
  std::string file(8, '\0');
  uint64_t n = MAX_HEADER_BYTES + 1;
  for (int i = 0; i < 8; ++i)
    file[i] = static_cast<char>(n >> (8 * i));
  expect_rejected(file, {"header length 100000001 exceeds the limit"});
  std::string huge(8, '\xff'); // 2^64-1: would overflow 8 + N
  expect_rejected(huge, {"exceeds the limit"});
}

TEST(HeaderRejects, HeaderPastEndOfFile) {
  std::string file = raw_safetensors("{}", "");
  file.resize(9); // prefix says 2 bytes of JSON, only 1 present
  expect_rejected(file, {"runs past the end of the file"});
}

// ---- Rule 4: encoding ------------------------------------------------------------------------

TEST(HeaderRejects, InvalidUtf8) {
  expect_rejected(raw_safetensors("{\"w\xff\":" + std::string("{}") + "}", ""),
                  {"not valid UTF-8"});
}

TEST(HeaderRejects, ByteOrderMark) {
  expect_rejected(raw_safetensors("\xEF\xBB\xBF{}", ""), {"byte-order mark"});
}

TEST(HeaderRejects, LeadingNul) {
  expect_rejected(raw_safetensors(std::string("\0{}", 3), ""), {"NUL byte"});
}

// ---- Rule 5: exactly one JSON object
// -------------------------------------------------------------

TEST(HeaderRejects, NotOneObject) {
  expect_rejected(raw_safetensors("[]", ""), {"must be one JSON object, found array"});
  expect_rejected(raw_safetensors("\"s\"", ""), {"found string"});
  expect_rejected(raw_safetensors("", ""), {"empty"});
  expect_rejected(raw_safetensors("    ", ""), {"empty"});
  expect_rejected(raw_safetensors("{} {}", ""), {"content after its JSON object"});
  expect_rejected(raw_safetensors("{}[]", ""), {"content after its JSON object"});
  expect_rejected(raw_safetensors("{}}", ""), {"content after its JSON object"});
  expect_rejected(raw_safetensors("{}x", ""), {"content after its JSON object"});
  expect_rejected(raw_safetensors("{\"a\":", ""), {"not valid JSON"});
  expect_rejected(raw_safetensors("{\"a\":{\"dtype\":\"U8\",}}", ""), {"not valid JSON"});
  // Where the parser stopped, as a byte of the file (the header starts at byte 8), to look at
  // with a hex viewer: just after the key with the bad escape (8 + 7), or at the ']' that
  // follows a superfluous comma (8 + 17).
  expect_rejected(raw_safetensors("{\"a\\q\":{}}", ""),
                  {"not valid JSON: Problem while parsing a string (near byte 15 of the file)"});
  expect_rejected(raw_safetensors("{\"a\":{\"shape\":[1,],\"dtype\":\"U8\"}}", ""),
                  {"not valid JSON", "(near byte 25 of the file)"});
}

// simdjson refuses a complete object followed by other text before the parser can look past the
// object (its root object must end the text; a string left open fails the whole text), and said
// the JSON "ended early in the middle of an object or array". Whatever follows, the object is
// complete: the text after it is what is wrong.
TEST(HeaderRejects, AnythingButWhitespaceAfterTheObjectIsContentAfterIt) {
  const std::string object = "{" + entry("w", "U8", "[1]", 0, 1) + "}";
  const std::string tails[] = {"x",   "//x", "\f",    std::string(1, '\0'), "]",   "\"",
                               "\"]", "1",   "  x  ", "\n{\"a\":",          "[1,", "}}"};
  for (const std::string& tail : tails) {
    auto r = parse(raw_safetensors(object + tail, "a"));
    ASSERT_FALSE(r.ok()) << printable(tail);
    EXPECT_EQ(r.status().message(), PATH + ": header has content after its JSON object (exactly "
                                           "one object is allowed)")
        << printable(tail);
  }
  // An object that is not complete is still malformed JSON, whatever follows where it broke off.
  const std::string broken[] = {"{\"w\":1",   "{\"w\":\"x",   "{\"w\":[1}x", "{\"w\":{}x",
                                "{\"w\" 1}x", "{\"w\":tru}x", "{\"w\":1,}x", "{\"w\":\"\\q\"}x"};
  for (const std::string& text : broken)
    expect_rejected(raw_safetensors(text, ""), {"header is not valid JSON: "});
}

// ---- Rule 6: duplicate keys ----------------------------------------------------------------

TEST(HeaderRejects, DuplicateTensor) {
  expect_rejected(raw_safetensors("{" + entry("w", "U8", "[1]", 0, 1) + "," +
                                      entry("w", "U8", "[1]", 1, 2) + "}",
                                  "ab"),
                  {"tensor 'w': duplicate key"});
}

TEST(HeaderRejects, DuplicateAfterUnescaping) {
  // "\u0077" is "w": the raw keys differ, the names do not.
  expect_rejected(raw_safetensors("{" + entry("w", "U8", "[1]", 0, 1) + "," +
                                      entry("\\u0077", "U8", "[1]", 1, 2) + "}",
                                  "ab"),
                  {"tensor 'w': duplicate key"});
}

TEST(HeaderRejects, DuplicateKeyInsideEntry) {
  expect_rejected(
      raw_safetensors(R"({"w":{"dtype":"U8","shape":[1],"dtype":"U8","data_offsets":[0,1]}})", "a"),
      {"tensor 'w': duplicate key 'dtype' in its entry"});
}

TEST(HeaderRejects, DuplicateKeyInsideMetadata) {
  expect_rejected(raw_safetensors(R"({"__metadata__":{"format":"pt","form\u0061t":"np"}})", ""),
                  {"__metadata__: duplicate key 'format'"});
  expect_rejected(raw_safetensors(R"({"__metadata__":{},"__metadata__":{}})", ""),
                  {"duplicate key '__metadata__'"});
}

// ---- Rule 7: __metadata__ ------------------------------------------------------------------

TEST(HeaderRejects, MetadataNotObjectOfStrings) {
  expect_rejected(raw_safetensors(R"({"__metadata__":["pt"]})", ""),
                  {"__metadata__ must be an object of strings, found array"});
  expect_rejected(raw_safetensors(R"({"__metadata__":{"format":"pt","n":3}})", ""),
                  {"value of 'n' must be a string, found number"});
  expect_rejected(raw_safetensors(R"({"__metadata__":{"a":{"b":"c"}}})", ""),
                  {"value of 'a' must be a string, found object"});
}

// ---- Rule 8: entry shape -------------------------------------------------------------------

TEST(HeaderRejects, EntryNotObject) {
  expect_rejected(raw_safetensors(R"({"w":[1,2]})", ""),
                  {"tensor 'w': entry must be an object", "found array"});
}

TEST(HeaderRejects, EntryLacksFields) {
  expect_rejected(raw_safetensors(R"({"w":{"shape":[1],"data_offsets":[0,1]}})", "a"),
                  {"tensor 'w': entry lacks 'dtype'"});
  expect_rejected(raw_safetensors(R"({"w":{"dtype":"U8","data_offsets":[0,1]}})", "a"),
                  {"tensor 'w': entry lacks 'shape'"});
  expect_rejected(raw_safetensors(R"({"w":{"dtype":"U8","shape":[1]}})", "a"),
                  {"tensor 'w': entry lacks 'data_offsets'"});
}

TEST(HeaderRejects, EntryUnknownKey) {
  expect_rejected(
      raw_safetensors(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"stride":[1]}})", "a"),
      {"tensor 'w': unknown key 'stride'"});
}

// ---- Rule 9: dtype -------------------------------------------------------------------------

TEST(HeaderRejects, UnknownDtype) {
  expect_rejected(raw_safetensors("{" + entry("w", "bf16", "[1]", 0, 2) + "}", "ab"),
                  {"tensor 'w': unknown dtype 'bf16'"});
  expect_rejected(raw_safetensors(R"({"w":{"dtype":16,"shape":[1],"data_offsets":[0,2]}})", "ab"),
                  {"tensor 'w': dtype must be a string, found number"});
}

// ---- Rule 10: shape entries ----------------------------------------------------------------

TEST(HeaderRejects, ShapeEntries) {
  auto with_shape = [](const std::string& shape) {
    return raw_safetensors("{" + entry("w", "U8", shape, 0, 1) + "}", "a");
  };
  expect_rejected(with_shape("[-1]"), {"tensor 'w': shape entry 0 -1 is negative"});
  expect_rejected(with_shape("[1.0]"), {"tensor 'w': shape entry 0 1.0 has a fraction"});
  expect_rejected(with_shape("[1,1e0]"), {"tensor 'w': shape entry 1 1e0 is in exponent form"});
  expect_rejected(with_shape("[18446744073709551616]"),
                  {"tensor 'w': shape entry 0 18446744073709551616 does not fit in 64 bits"});
  expect_rejected(with_shape("[\"1\"]"), {"tensor 'w': shape entry 0 must be an integer"});
  expect_rejected(with_shape("7"), {"tensor 'w': shape must be an array of integers"});
  expect_rejected(with_shape("[01]"), {"tensor 'w': shape entry 0 01 is not a plain"});
}

// ---- Rule 11: data_offsets -----------------------------------------------------------------

TEST(HeaderRejects, DataOffsets) {
  auto with_offsets = [](const std::string& offsets) {
    return raw_safetensors(R"({"w":{"dtype":"U8","shape":[0],"data_offsets":)" + offsets + "}}",
                           "");
  };
  expect_rejected(with_offsets("[0]"), {"tensor 'w': data_offsets must be exactly two", "found 1"});
  expect_rejected(with_offsets("[0,0,0]"), {"found 3"});
  expect_rejected(with_offsets("[-1,0]"), {"tensor 'w': data_offsets entry 0 -1 is negative"});
  expect_rejected(with_offsets("[0,1.5]"), {"data_offsets entry 1 1.5 has a fraction"});
  expect_rejected(with_offsets("{}"), {"data_offsets must be an array"});
  expect_rejected(
      raw_safetensors(R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[4,2]}})", "abcd"),
      {"tensor 'w': data_offsets [4,2] end before they begin"});
}

// ---- Rules 12-14: sizes --------------------------------------------------------------------

TEST(HeaderRejects, ElementCountOverflow) {
  // 2^32 * 2^32 wraps to 0, which would match an empty range without a checked product.
  expect_rejected(
      raw_safetensors("{" + entry("w", "U8", "[4294967296,4294967296]", 0, 0) + "}", ""),
      {"tensor 'w': element count of shape [4294967296,4294967296] overflows"});
}

TEST(HeaderRejects, BitCountOverflow) {
  // 2^62 elements fit, 2^62 x 16 bits do not.
  expect_rejected(
      raw_safetensors("{" + entry("w", "BF16", "[4611686018427387904]", 0, 0) + "}", ""),
      {"tensor 'w': bit count of shape [4611686018427387904] x BF16 overflows"});
}

TEST(HeaderRejects, SubByteNotWholeBytes) {
  expect_rejected(raw_safetensors("{" + entry("w", "F4", "[3]", 0, 1) + "}", "a"),
                  {"tensor 'w': shape [3] x F4 is 12 bits, not a whole number of bytes"});
  expect_rejected(raw_safetensors("{" + entry("w", "F6_E2M3", "[1]", 0, 1) + "}", "a"),
                  {"tensor 'w': shape [1] x F6_E2M3 is 6 bits"});
}

TEST(HeaderRejects, SizeDiffersFromOffsets) {
  expect_rejected(raw_safetensors("{" + entry("w", "BF16", "[2,3]", 0, 10) + "}", "0123456789"),
                  {"x.safetensors: tensor 'w': shape [2,3] x BF16 is 12 bytes but data_offsets "
                   "span 10"});
}

// ---- Rule 15: tiling -----------------------------------------------------------------------

TEST(HeaderRejects, FirstTensorNotAtZero) {
  expect_rejected(raw_safetensors("{" + entry("w", "U8", "[2]", 2, 4) + "}", "abcd"),
                  {"tensor 'w': the first tensor in data order begins at offset 2"});
}

TEST(HeaderRejects, Gap) {
  expect_rejected(raw_safetensors("{" + entry("a", "U8", "[2]", 0, 2) + "," +
                                      entry("b", "U8", "[2]", 3, 5) + "}",
                                  "abcde"),
                  {"tensor 'b': gap of 1 bytes before it: tensor 'a' ends at 2"});
}

TEST(HeaderRejects, Overlap) {
  expect_rejected(raw_safetensors("{" + entry("a", "U8", "[4]", 0, 4) + "," +
                                      entry("b", "U8", "[4]", 2, 6) + "}",
                                  "abcdef"),
                  {"tensor 'b': overlaps tensor 'a'"});
  // An empty tensor inside another tensor's range is an overlap too.
  expect_rejected(raw_safetensors("{" + entry("a", "U8", "[4]", 0, 4) + "," +
                                      entry("e", "U8", "[0]", 2, 2) + "}",
                                  "abcd"),
                  {"tensor 'e': overlaps tensor 'a'"});
}

// ---- Rule 16: file size --------------------------------------------------------------------

TEST(HeaderRejects, BytesAfterLastTensor) {
  expect_rejected(raw_safetensors("{" + entry("w", "U8", "[2]", 0, 2) + "}", "abc"),
                  {"1 unused bytes after the last tensor ('w' ends at 2)"});
  expect_rejected(raw_safetensors("{}", "abc"), {"3 unused bytes", "no tensors"});
}

TEST(HeaderRejects, FileTooShortForLastTensor) {
  expect_rejected(raw_safetensors("{" + entry("w", "U8", "[4]", 0, 4) + "}", "ab"),
                  {"tensor 'w': ends at offset 4 but the data section has only 2 bytes"});
}

// ---- All problems at once ------------------------------------------------------------------

TEST(HeaderRejects, ReportsAllProblems) {
  std::string header = "{" + entry("a", "Q8", "[2]", 0, 2) + "," +
                       R"("b":{"dtype":"U8","shape":[-2],"data_offsets":[2,4]},)" +
                       entry("c", "U16", "[2]", 4, 6) + "}";
  auto r = parse(raw_safetensors(header, "abcdef"));
  ASSERT_FALSE(r.ok());
  auto lines = lines_of(r.status().message());
  ASSERT_EQ(lines.size(), 3u) << r.status().message();
  EXPECT_NE(lines[0].find("tensor 'a': unknown dtype 'Q8'"), std::string::npos);
  EXPECT_NE(lines[1].find("tensor 'b': shape entry 0 -2 is negative"), std::string::npos);
  EXPECT_NE(lines[2].find("tensor 'c': shape [2] x U16 is 4 bytes but data_offsets span 2"),
            std::string::npos);
}

// ---- Accepted unusual files ----------------------------------------------------------------

TEST(HeaderAccepts, EmptyHeader) {
  auto r = parse(raw_safetensors("{}", ""));
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_TRUE(r->tensors.empty());
  EXPECT_EQ(r->header_length, 2u);
  EXPECT_EQ(r->data_start, 10u);
  EXPECT_EQ(r->data_size(), 0u);
}

TEST(HeaderAccepts, ScalarAndEmptyTensors) {
  // Empty tensors at the start, between two tensors (sharing offsets with both), and at the end.
  std::string header = "{" + entry("z0", "F32", "[0,5]", 0, 0) + "," +
                       entry("s", "F32", "[]", 0, 4) + "," + entry("z1", "BF16", "[3,0]", 4, 4) +
                       "," + entry("t", "U8", "[2]", 4, 6) + "," + entry("z2", "U8", "[0]", 6, 6) +
                       "}";
  auto r = parse(raw_safetensors(header, "abcdef"));
  ASSERT_TRUE(r.ok()) << r.status().message();
  ASSERT_EQ(r->tensors.size(), 5u);
  std::vector<std::string> order;
  for (const auto& t : r->tensors)
    order.push_back(t.name);
  EXPECT_EQ(order, (std::vector<std::string>{"z0", "s", "z1", "t", "z2"}));
  const TensorInfo* s = r->find("s");
  ASSERT_NE(s, nullptr);
  EXPECT_TRUE(s->shape.empty());
  EXPECT_EQ(s->size(), 4u);
  EXPECT_EQ(r->data_size(), 6u);
}

TEST(HeaderAccepts, WhitespaceAndPaddingTo4096) {
  std::string json = "\n\t {" + entry("w", "U8", "[3]", 0, 3) + "}  \r\n";
  auto r = parse(raw_safetensors(json, "abc"));
  ASSERT_TRUE(r.ok()) << r.status().message();

  std::string padded = "{" + entry("w", "U8", "[3]", 0, 3) + "}";
  padded.resize(4096 - 8, ' ');
  auto p = parse(raw_safetensors(padded, "abc"));
  ASSERT_TRUE(p.ok()) << p.status().message();
  EXPECT_EQ(p->data_start, 4096u);
  EXPECT_EQ(p->tensors[0].begin, 0u);
}

TEST(HeaderAccepts, KeyOrderDiffersFromDataOrder) {
  std::string header = "{" + entry("c", "U8", "[1]", 2, 3) + "," + entry("a", "U8", "[1]", 1, 2) +
                       "," + R"("__metadata__":{"z":"1","format":"pt"},)" +
                       R"("b":{"data_offsets":[0,1],"shape":[1],"dtype":"U8"})" + "}";
  auto r = parse(raw_safetensors(header, "xyz"));
  ASSERT_TRUE(r.ok()) << r.status().message();
  ASSERT_EQ(r->tensors.size(), 3u);
  EXPECT_EQ(r->tensors[0].name, "b");
  EXPECT_EQ(r->tensors[1].name, "a");
  EXPECT_EQ(r->tensors[2].name, "c");
  EXPECT_EQ(r->metadata, (Metadata{{"format", "pt"}, {"z", "1"}}));
  // The name index is sorted by name whatever the data order.
  ASSERT_EQ(r->by_name.size(), 3u);
  EXPECT_EQ(r->tensors[r->by_name[0]].name, "a");
  EXPECT_EQ(r->tensors[r->by_name[2]].name, "c");
  EXPECT_EQ(r->find("b")->begin, 0u);
  EXPECT_EQ(r->find("nope"), nullptr);
}

TEST(HeaderAccepts, EscapedNamesAreUnescaped) {
  std::string header = R"({"a\"b\u00e9":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})";
  auto r = parse(raw_safetensors(header, "q"));
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_NE(r->find("a\"b\xC3\xA9"), nullptr);
}

TEST(HeaderAccepts, EveryDtype) {
  // Each dtype with a shape of 8 elements: a whole number of bytes even at 4 and 6 bits.
  std::string header = "{";
  uint64_t offset = 0;
  for (int i = 0; i < DTYPE_COUNT; ++i) {
    auto dtype = static_cast<DType>(i);
    uint64_t bytes = 8 * dtype_bits(dtype) / 8;
    if (i)
      header += ",";
    header += entry("t" + std::to_string(i), std::string(dtype_name(dtype)), "[2,4]", offset,
                    offset + bytes);
    offset += bytes;
  }
  header += "}";
  auto r = parse(raw_safetensors(header, std::string(offset, '\x5a')));
  ASSERT_TRUE(r.ok()) << r.status().message();
  ASSERT_EQ(r->tensors.size(), size_t(DTYPE_COUNT));
  for (int i = 0; i < DTYPE_COUNT; ++i) {
    const TensorInfo* t = r->find("t" + std::to_string(i));
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->dtype, static_cast<DType>(i));
    EXPECT_EQ(t->size(), dtype_bits(t->dtype));
    EXPECT_EQ(t->shape, (std::vector<uint64_t>{2, 4}));
  }
}

TEST(HeaderAccepts, LargestPlainIntegers) {
  // 2^64-1 as a dimension is a valid number; with a zero dimension first the count stays 0.
  std::string header = "{" + entry("w", "U8", "[0,18446744073709551615]", 0, 0) + "}";
  auto r = parse(raw_safetensors(header, ""));
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->tensors[0].shape[1], UINT64_MAX);
}

// ---- Randomized: corrupted headers never crash and never yield an inconsistent Header ---------

TEST(HeaderRandomized, MutatedHeadersAreRejectedOrConsistent) {
  std::mt19937_64 rng(testing::test_seed());
  const std::string header =
      "{" + entry("a", "BF16", "[2,3]", 0, 12) + "," + R"("__metadata__":{"format":"pt"},)" +
      entry("b", "F4", "[4]", 12, 14) + "," + entry("c", "U8", "[0]", 14, 14) + "," +
      entry("d", "F32", "[]", 14, 18) + "}";
  const std::string data(18, '\x33');
  const std::string alphabet = "{}[]\",:0123456789-+.eE \\u\x00\xff";
  for (int iteration = 0; iteration < 3000; ++iteration) {
    std::string h = header;
    int edits = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < edits; ++k) {
      size_t pos = rng() % h.size();
      switch (rng() % 3) {
      case 0:
        h[pos] = alphabet[rng() % alphabet.size()];
        break;
      case 1:
        h.erase(pos, 1);
        break;
      default:
        h.insert(pos, 1, alphabet[rng() % alphabet.size()]);
        break;
      }
    }
    std::string file = raw_safetensors(h, data.substr(0, rng() % 2 ? data.size() : rng() % 19));
    auto r = parse(file);
    if (!r.ok()) {
      ASSERT_EQ(r.status().code(), Errc::format);
      for (const auto& line : lines_of(r.status().message()))
        ASSERT_EQ(line.rfind(PATH + ": ", 0), 0u) << line;
      continue;
    }
    // Accepted: the tensors must tile the data section exactly, with sizes that match.
    uint64_t cursor = 0;
    for (const auto& t : r->tensors) {
      ASSERT_EQ(t.begin, cursor) << h;
      ASSERT_EQ(tensor_byte_size(t.dtype, t.shape), t.size()) << h;
      cursor = t.end;
    }
    ASSERT_EQ(r->data_start + cursor, file.size()) << h;
  }
}

} // namespace
} // namespace shardshift
