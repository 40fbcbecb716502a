// status.cpp: names of the error codes, for messages and the --json output.
#include "shardshift/status.h"

namespace shardshift {

const char* errc_name(Errc code) {
  switch (code) {
  case Errc::ok:
    return "ok";
  case Errc::io:
    return "io";
  case Errc::no_space:
    return "no_space";
  case Errc::broken_pipe:
    return "broken_pipe";
  case Errc::format:
    return "format";
  case Errc::file_changed:
    return "file_changed";
  case Errc::plan:
    return "plan";
  case Errc::unsupported:
    return "unsupported";
  case Errc::invalid_argument:
    return "invalid_argument";
  case Errc::interrupted:
    return "interrupted";
  case Errc::cuda:
    return "cuda";
  }
  return "unknown";
}

} // namespace shardshift
