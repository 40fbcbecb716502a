// config_fuzz.cpp: reading config.json's model_type (read_config_model_type) from arbitrary bytes.
//
// The reader takes a path, so each input is written into one in-memory file (memfd) that is read
// through /proc/self/fd: nothing is left on disk, whatever the run does.
#include "checkpoint_config.h"
#include "fuzz_support.h"

#include <cstddef>
#include <cstdint>
#include <string>
#include <sys/mman.h>
#include <unistd.h>

using namespace shardshift;
using fuzz::check;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const int fd = memfd_create("config.json", MFD_CLOEXEC);
  static const std::string path = "/proc/self/fd/" + std::to_string(fd);
  check(fd >= 0, "memfd_create failed");
  check(ftruncate(fd, 0) == 0, "ftruncate failed");
  size_t written = 0;
  while (written < size) {
    ssize_t n = pwrite(fd, data + written, size - written, static_cast<off_t>(written));
    check(n > 0, "pwrite failed");
    written += static_cast<size_t>(n);
  }
  auto model_type = read_config_model_type(path);
  if (!model_type.ok())
    check(!model_type.status().message().empty(), "an error without a message");
  return 0;
}
