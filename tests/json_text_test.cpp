// json_text_test.cpp: the JSON string escaper and JsonWriter: exact bytes in both styles, numbers,
// line breaks, streaming with take(), and documents that parse back to what was written.
#include "shardshift/json_text.h"

#include <cmath>
#include <limits>
#include <string>

#include <gtest/gtest.h>
#include <simdjson.h>

namespace shardshift {
namespace {

TEST(JsonString, EscapesQuotesBackslashesAndControls) {
  EXPECT_EQ(json_string("a\"b\\c\nd\te\x01"), "\"a\\\"b\\\\c\\nd\\te\\u0001\"");
  EXPECT_EQ(json_string("caf\xc3\xa9"), "\"caf\xc3\xa9\""); // UTF-8 passes through
  std::string ascii;
  append_json_string(ascii, "caf\xc3\xa9 \xf0\x9f\x98\x80", /*ascii_only=*/true);
  EXPECT_EQ(ascii, "\"caf\\u00e9 \\ud83d\\ude00\"");
}

// A file name in another encoding is no UTF-8: each byte that starts no valid sequence becomes
// U+FFFD, and the document parses; valid sequences around it are kept.
TEST(JsonString, BytesThatAreNoUtf8BecomeTheReplacementCharacter) {
  const std::pair<std::string, std::string> cases[] = {
      {"caf\xe9.txt", "\"caf\\ufffd.txt\""}, // Latin-1
      {"a\x80"
       "b",
       "\"a\\ufffdb\""},                                        // a stray continuation byte
      {"\xc3", "\"\\ufffd\""},                                  // cut short at the end
      {"\xc0\xaf", "\"\\ufffd\\ufffd\""},                       // an overlong '/'
      {"\xed\xa0\x80", "\"\\ufffd\\ufffd\\ufffd\""},            // a surrogate
      {"\xf4\x90\x80\x80", "\"\\ufffd\\ufffd\\ufffd\\ufffd\""}, // beyond U+10FFFF
      {"\xf0\x9f\x98\x80\xff", "\"\xf0\x9f\x98\x80\\ufffd\""},  // valid, then not
  };
  for (const auto& [text, want] : cases) {
    EXPECT_EQ(json_string(text), want);
    simdjson::dom::parser parser;
    simdjson::dom::element doc;
    EXPECT_EQ(parser.parse(json_string(text)).get(doc), simdjson::SUCCESS) << want;
    std::string ascii;
    append_json_string(ascii, text, /*ascii_only=*/true);
    EXPECT_EQ(parser.parse(ascii).get(doc), simdjson::SUCCESS) << ascii;
    EXPECT_NE(ascii.find("\\ufffd"), std::string::npos) << ascii;
  }
}

TEST(JsonWriter, SpacedStyleIsPythonsDefault) {
  JsonWriter w;
  w.begin_object().key("name").value("x").key("shape").begin_array().value(2u).value(3u);
  w.end_array().key("ok").value(true).key("none").null().key("empty").begin_object().end_object();
  w.end_object();
  EXPECT_EQ(w.text(), R"({"name": "x", "shape": [2, 3], "ok": true, "none": null, "empty": {}})");
  EXPECT_TRUE(w.complete());
}

TEST(JsonWriter, CompactStyleHasNoSpaces) {
  JsonWriter w(JsonStyle::compact);
  w.begin_object().key("a").begin_array().begin_array().end_array().value(-1).end_array();
  w.key("b").value(false).end_object();
  EXPECT_EQ(w.text(), R"({"a":[[],-1],"b":false})");
}

TEST(JsonWriter, KeysAndStringsAreEscaped) {
  JsonWriter w;
  w.begin_object().key("we\"ird\nkey").value("tab\there").end_object();
  EXPECT_EQ(w.text(), "{\"we\\\"ird\\nkey\": \"tab\\there\"}");
  // A string literal is a string, not a bool.
  JsonWriter literal;
  literal.value("text");
  EXPECT_EQ(literal.text(), "\"text\"");
}

TEST(JsonWriter, IntegersKeepEveryDigit) {
  JsonWriter w(JsonStyle::compact);
  w.begin_array().value(std::numeric_limits<uint64_t>::max());
  w.value(std::numeric_limits<int64_t>::min()).value(0).value(uint8_t{7}).end_array();
  EXPECT_EQ(w.text(), "[18446744073709551615,-9223372036854775808,0,7]");
}

TEST(JsonWriter, DoublesRoundTripAndNonFiniteIsNull) {
  JsonWriter w(JsonStyle::compact);
  w.begin_array().value(0.1).value(2.5).value(1e21).value(std::nan(""));
  w.value(std::numeric_limits<double>::infinity()).end_array();
  EXPECT_EQ(w.text(), "[0.1,2.5,1e+21,null,null]");

  JsonWriter f(JsonStyle::compact);
  f.begin_array().fixed(1.5, 3).fixed(12345.6789, 3).fixed(0, 0).fixed(-std::nan(""), 3);
  f.end_array();
  EXPECT_EQ(f.text(), "[1.500,12345.679,0,null]");
}

TEST(JsonWriter, LineBreaksIndentByDepth) {
  JsonWriter w;
  w.begin_object().key("files").begin_array();
  for (int i = 0; i < 2; ++i)
    w.line_break().begin_object().key("n").value(i).end_object();
  w.end_array().end_object();
  EXPECT_EQ(w.text(), "{\"files\": [\n    {\"n\": 0},\n    {\"n\": 1}]}");

  JsonWriter compact(JsonStyle::compact); // one element a line, nothing more
  compact.begin_array().line_break().value(1).line_break().value(2).end_array();
  EXPECT_EQ(compact.text(), "[\n1,\n2]");
}

TEST(JsonWriter, TakeStreamsTheDocumentInPieces) {
  JsonWriter whole(JsonStyle::compact), pieces(JsonStyle::compact);
  std::string streamed;
  for (JsonWriter* w : {&whole, &pieces}) {
    w->begin_object().key("events").begin_array();
    for (int i = 0; i < 100; ++i) {
      w->begin_object().key("i").value(i).key("s").value(std::to_string(i)).end_object();
      if (w == &pieces && i % 7 == 0)
        streamed += w->take();
    }
    w->end_array().end_object();
  }
  streamed += pieces.take();
  EXPECT_EQ(streamed, whole.text());
  EXPECT_TRUE(pieces.complete());
  EXPECT_EQ(pieces.text(), "");
}

TEST(JsonWriter, OutputParsesBackToTheSameValues) {
  JsonWriter w;
  w.begin_object().key("name").value("layers.\"0\"\n\x7f").key("size").value(uint64_t{1} << 40);
  w.key("rate").value(1234.5678).key("list").begin_array();
  for (int i = 0; i < 3; ++i)
    w.line_break().value(i * 10);
  w.end_array().end_object();
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  ASSERT_EQ(parser.parse(w.text()).get(doc), simdjson::SUCCESS) << w.text();
  EXPECT_EQ(std::string_view(doc["name"]), "layers.\"0\"\n\x7f");
  EXPECT_EQ(uint64_t(doc["size"]), uint64_t{1} << 40);
  EXPECT_EQ(double(doc["rate"]), 1234.5678);
  EXPECT_EQ(simdjson::dom::array(doc["list"]).size(), 3u);
}

} // namespace
} // namespace shardshift
