// signals.h: how a long-running command stops on Ctrl-C, SIGTERM or a hangup. While a
// CancelOnSignal is in scope, SIGINT, SIGTERM and SIGHUP (unless ignored on entry, as under
// nohup) set a flag that the library polls (ConvertOptions::cancel,
// SynthOptions::cancel) so it can remove what it wrote and return Errc::interrupted; later
// signals do not cut that short (they print that cleanup is under way). SIGXFSZ is ignored, so a
// file-size limit fails a write (EFBIG) rather than the process. Leaving the scope restores
// the dispositions found on entry. Thread-safety: one CancelOnSignal at a time per process (the
// handler is process-wide).
#pragma once

#include <atomic>
#include <signal.h>

namespace shardshift::app {

class CancelOnSignal {
public:
  /// With `ignore_sigpipe`, SIGPIPE is ignored too (restored likewise), so a closed stdout
  /// becomes an EPIPE error the library reports and cleans up after, not a silent death.
  explicit CancelOnSignal(bool ignore_sigpipe = false);
  ~CancelOnSignal();
  CancelOnSignal(const CancelOnSignal&) = delete;
  CancelOnSignal& operator=(const CancelOnSignal&) = delete;

  /// The flag to hand to the library.
  const std::atomic<bool>* flag() const;
  bool cancelled() const { return flag()->load(); }

private:
  struct sigaction old_int_ {
  }, old_term_{}, old_hup_{}, old_pipe_{}, old_xfsz_{};
  bool ignore_sigpipe_;
};

} // namespace shardshift::app
