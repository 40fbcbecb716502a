#include "test_support.h"

#include <cerrno>
#include <csignal>

#include <unistd.h>

#include <fcntl.h>

#include <spawn.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <sys/wait.h>

extern char** environ;

namespace shardshift::testing {

namespace fs = std::filesystem;

namespace {

// The library writes into pipes (--pipe-to, streams) on the promise that SIGPIPE is ignored, as
// the app ignores it (process_target.h, shard_writer.cpp): a command that exits early then shows
// as EPIPE, not as the death of the process. Every test program that links this file calls the
// library the way the app does. (app_cli_test sets the default disposition itself before it
// checks what the app's guard does to it.)
const bool sigpipe_ignored = [] {
  std::signal(SIGPIPE, SIG_IGN);
  return true;
}();

} // namespace

TempDir::TempDir() {
  std::string tmpl = (fs::temp_directory_path() / "shardshift-test-XXXXXX").string();
  char* made = mkdtemp(tmpl.data());
  if (!made)
    throw std::runtime_error("mkdtemp failed");
  path_ = made;
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

void write_bytes(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out)
    throw std::runtime_error("cannot write " + path.string());
}

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string raw_safetensors(const std::string& header_json, const std::string& data) {
  std::string out(8, '\0');
  uint64_t n = header_json.size();
  for (int i = 0; i < 8; ++i)
    out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header_json + data;
}

uint64_t test_seed() {
  uint64_t seed;
  if (const char* env = std::getenv("SHARDSHIFT_SEED")) {
    seed = std::strtoull(env, nullptr, 0);
  } else {
    seed = std::random_device{}();
    seed = (seed << 32) ^ std::random_device{}();
  }
  std::cout << "[ seed ] SHARDSHIFT_SEED=" << seed << "\n";
  ::testing::Test::RecordProperty("seed", std::to_string(seed));
  return seed;
}

std::string random_bytes(std::mt19937_64& rng, size_t n) {
  std::string s(n, '\0');
  for (auto& c : s)
    c = static_cast<char>(rng() & 0xff);
  return s;
}

static std::string slurp_and_remove(const fs::path& p) {
  std::string s = read_bytes(p);
  std::error_code ec;
  fs::remove(p, ec);
  return s;
}

CommandResult run_shell(const std::string& command) {
  TempDir tmp;
  auto out_path = tmp / "stdout";
  auto err_path = tmp / "stderr";
  std::string full = "(" + command + ") >" + out_path.string() + " 2>" + err_path.string();
  int status = std::system(full.c_str());
  CommandResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = slurp_and_remove(out_path);
  r.err = slurp_and_remove(err_path);
  return r;
}

CommandResult run_shardshift(const std::string& args) {
  return run_shell(std::string(SHARDSHIFT_BINARY) + " " + args + " </dev/null");
}

std::string shell_quoted(const fs::path& path) {
  return "'" + path.string() + "'";
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    lines.push_back(line);
  return lines;
}

std::vector<std::string> list_dir(const fs::path& dir) {
  std::vector<std::string> names;
  for (auto& e : fs::directory_iterator(dir))
    names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

std::map<std::string, std::string> files_of(const std::filesystem::path& dir) {
  std::map<std::string, std::string> files;
  for (const std::string& name : list_dir(dir))
    files[name] = read_bytes(dir / name);
  return files;
}

int spawn_shardshift(const std::vector<std::string>& args, const std::filesystem::path& log) {
  std::vector<char*> argv{const_cast<char*>(SHARDSHIFT_BINARY)};
  for (const std::string& a : args)
    argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  pid_t pid = -1;
  if (posix_spawn(&pid, SHARDSHIFT_BINARY, &actions, nullptr, argv.data(), environ) != 0)
    pid = -1;
  posix_spawn_file_actions_destroy(&actions);
  return pid;
}

int wait_status(int pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

} // namespace shardshift::testing
