#include "signals.h"

#include "cli.h"

#include <cassert>
#include <cstdlib>
#include <unistd.h>

namespace shardshift::app {

namespace {

// A handler may only touch lock-free atomics, so the flag is a global; CancelOnSignal is the only
// way to install the handler, and it allows one instance at a time.
std::atomic<bool> cancel_requested{false};
std::atomic<bool> guard_active{false};
static_assert(std::atomic<bool>::is_always_lock_free);

extern "C" void on_cancel_signal(int) {
  // The first signal asks the library to stop and clean up. Exiting on a later one would leave
  // the staging directory behind and, with --pipe-to, let an uploader take the end of its input
  // for the end of a file; cleaning up takes well under a second (docs/PERFORMANCE.md), so later
  // signals only say that it is under way. write(2) is async-signal-safe; its result does not
  // matter here.
  if (cancel_requested.exchange(true)) {
    static constexpr char NOTE[] =
        "\nshardshift: already stopping: cleaning up what this run started first...\n";
    [[maybe_unused]] ssize_t n = ::write(STDERR_FILENO, NOTE, sizeof NOTE - 1);
  }
}

} // namespace

CancelOnSignal::CancelOnSignal(bool ignore_sigpipe) : ignore_sigpipe_(ignore_sigpipe) {
  [[maybe_unused]] bool was_active = guard_active.exchange(true);
  assert(!was_active && "one CancelOnSignal at a time");
  cancel_requested.store(false);
  struct sigaction action {};
  action.sa_handler = on_cancel_signal;
  sigemptyset(&action.sa_mask);
  // SA_RESTART: a blocked read or write resumes instead of failing with EINTR; the library
  // polls the flag between chunks, so cancellation still takes effect promptly.
  action.sa_flags = SA_RESTART;
  sigaction(SIGINT, &action, &old_int_);
  sigaction(SIGTERM, &action, &old_term_);
  // A closed terminal or a dropped ssh session (SIGHUP) stops the run the same way, so it does
  // not leave a staging directory of gigabytes behind; unless the signal was ignored on entry
  // (nohup), which is a request to keep running.
  sigaction(SIGHUP, nullptr, &old_hup_);
  if (old_hup_.sa_handler != SIG_IGN)
    sigaction(SIGHUP, &action, nullptr);
  struct sigaction ignore {};
  ignore.sa_handler = SIG_IGN;
  sigemptyset(&ignore.sa_mask);
  if (ignore_sigpipe_)
    sigaction(SIGPIPE, &ignore, &old_pipe_);
  // A file-size limit (ulimit -f) would kill the process at the write that passes it, with no
  // message and the staging directory left; ignored, that write fails with EFBIG, which the run
  // reports and cleans up after like a full disk.
  sigaction(SIGXFSZ, &ignore, &old_xfsz_);
}

CancelOnSignal::~CancelOnSignal() {
  sigaction(SIGXFSZ, &old_xfsz_, nullptr);
  if (ignore_sigpipe_)
    sigaction(SIGPIPE, &old_pipe_, nullptr);
  sigaction(SIGHUP, &old_hup_, nullptr);
  sigaction(SIGTERM, &old_term_, nullptr);
  sigaction(SIGINT, &old_int_, nullptr);
  guard_active.store(false);
}

const std::atomic<bool>* CancelOnSignal::flag() const {
  return &cancel_requested;
}

} // namespace shardshift::app
