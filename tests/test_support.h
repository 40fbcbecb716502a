// test_support.h: small helpers every test program shares: scratch directories, raw safetensors
// files built byte by byte, seeded randomness, and running the shardshift binary.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace shardshift::testing {

/// A fresh directory under the system temp dir, removed with everything in it on destruction.
class TempDir {
public:
  TempDir();
  ~TempDir();
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

private:
  std::filesystem::path path_;
};

/// Writes `bytes` to `path` (creating or truncating it).
void write_bytes(const std::filesystem::path& path, const std::string& bytes);
std::string read_bytes(const std::filesystem::path& path);

/// A raw safetensors file: 8-byte little-endian length of `header_json`, the JSON, then `data`.
/// No validation: tests use it to build malformed files.
std::string raw_safetensors(const std::string& header_json, const std::string& data);

/// A seed for a randomized test: SHARDSHIFT_SEED from the environment, else random. Printed
/// (via RecordProperty and stdout) so a failure can be replayed.
uint64_t test_seed();
/// Random bytes.
std::string random_bytes(std::mt19937_64& rng, size_t n);

struct CommandResult {
  int exit_code = -1;
  std::string out, err;
};
/// Runs the built shardshift binary with `args` (a shell-quoted string), capturing stdout and
/// stderr.
CommandResult run_shardshift(const std::string& args);
/// Starts the built shardshift binary with `args` in the background, its stdout and stderr into
/// `log`; the process id, or -1.
int spawn_shardshift(const std::vector<std::string>& args, const std::filesystem::path& log);
/// Waits for a process started by spawn_shardshift; its wait status (WIFEXITED...).
int wait_status(int pid);
/// Runs a shell command, capturing its output.
CommandResult run_shell(const std::string& command);
/// `path` in single quotes, as one word of run_shardshift's or run_shell's argument string (the
/// paths tests make hold no single quote).
std::string shell_quoted(const std::filesystem::path& path);

/// The lines of `text`, without their '\n'; a final line needs none, and no empty line follows
/// a final '\n'.
std::vector<std::string> lines_of(const std::string& text);

/// Names of the files in `dir` (not recursive), sorted.
std::vector<std::string> list_dir(const std::filesystem::path& dir);

/// Every file of `dir` (list_dir) with its bytes: two outputs compare equal when they hold the
/// same files with the same bytes.
std::map<std::string, std::string> files_of(const std::filesystem::path& dir);

} // namespace shardshift::testing
