// consumer: converts a tiny synthetic checkpoint through the installed public API and checks the
// result. Usage: consumer WORK_DIR (an empty directory it may fill). Exit 0 when every check holds.
#include <shardshift/checkpoint.h>
#include <shardshift/convert.h>
#include <shardshift/io.h>
#include <shardshift/synth.h>
#include <shardshift/tensor_stream.h>
#include <shardshift/version.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>

namespace fs = std::filesystem;

static int failed(const std::string& what) {
  std::fprintf(stderr, "consumer: %s\n", what.c_str());
  return 1;
}

int main(int argc, char** argv) {
  if (argc != 2)
    return failed("usage: consumer WORK_DIR");
  const fs::path work = argv[1];

  shardshift::SynthOptions synth;
  synth.out = work / "hf";
  synth.layers = 1;
  synth.scale_hidden = synth.scale_intermediate = 32;
  synth.scale_experts = 16;
  synth.scale_vocab = 256;
  synth.max_shard_size = 1'000'000;
  shardshift::SynthSummary made;
  if (auto s = shardshift::synth(synth, shardshift::Io::system(), {}, &made); !s.ok())
    return failed("synth: " + s.message());

  shardshift::ConvertOptions options;
  options.input = synth.out;
  options.output = work / "native";
  options.max_memory = 64 << 20;
  auto converted = shardshift::convert(options);
  if (!converted.ok())
    return failed("convert: " + converted.status().message());
  if (converted->adapter != "diffusion_gemma" || converted->direction != shardshift::Direction::from_hf)
    return failed("convert: unexpected adapter " + converted->adapter);

  // The output opens as a checkpoint with every tensor the conversion reported.
  auto out = shardshift::Checkpoint::open(options.output);
  if (!out.ok())
    return failed("open output: " + out.status().message());
  if (out->tensors.size() != converted->tensors || converted->tensors == 0)
    return failed("output holds " + std::to_string(out->tensors.size()) + " tensors, convert said " +
                  std::to_string(converted->tensors));

  // The streaming call yields the same tensors, byte for byte.
  uint64_t mismatches = 0;
  auto streamed = shardshift::for_each_converted_tensor(
      synth.out, {}, {.max_piece_bytes = 4096},
      [&](const shardshift::ConvertedTensor& t, std::span<const std::byte> piece, uint64_t offset) {
        auto ref = out->find(t.name);
        if (!ref || piece.size() > 4096 ||
            std::memcmp(out->bytes(*ref).data() + offset, piece.data(), piece.size()) != 0)
          ++mismatches;
        return true;
      });
  if (!streamed.ok())
    return failed("stream: " + streamed.status().message());
  if (mismatches != 0 || streamed->tensors != converted->tensors || !streamed->complete)
    return failed("stream: " + std::to_string(mismatches) + " pieces differ from the output");

  const shardshift::BuildInfo info = shardshift::build_info();
  std::printf("consumer: shardshift %s converted %llu tensors\n", info.version.c_str(),
              static_cast<unsigned long long>(converted->tensors));
  return 0;
}
