// process_target.h: output files streamed into commands, one command per file (an uploader such
// as `aws s3 cp - s3://bucket/{name}` or `rclone rcat remote:{name}`).
//
// For each file, `sh -c COMMAND` is started with {name} and {size} replaced by the file's name and
// exact byte size (shell-quoted), the same in its environment as SHARDSHIFT_NAME and
// SHARDSHIFT_SIZE (for a script that takes them from there), and the file's bytes are written to
// its stdin (splice for pass-through runs). A file is finished only when every byte went in and the
// command then exited with status 0. A file that fails or is cancelled is never handed over as
// complete: the command is interrupted (SIGINT, then SIGTERM, then SIGKILL, each after a grace
// period) *before* its stdin is closed, so it sees a signal rather than an ordinary end of input,
// and uploaders that honour SIGINT leave no object behind.
//
// The same holds when shardshift itself dies (kill -9, a crash): each command's stdin pipe has a
// second writer, a small guard (`sh`) that leads the command's process group, ignores SIGINT and
// SIGTERM, and waits on a "lifeline" pipe for shardshift to say that the input is complete. Until
// then the guard keeps the pipe open, so the command never sees an end of input that shardshift
// did not mean; if the lifeline ends without that word (shardshift is gone), the guard sends the
// group SIGINT, then SIGTERM and SIGKILL (itself included), each after the grace period, holding
// the pipe to the end.
//
// With a cancel flag (Ctrl-C, SIGTERM): a Ctrl-C at a terminal reaches shardshift alone (each
// command leads no group of the terminal's), so a watcher sends every running command's group
// SIGINT once the flag is raised; a write blocked on a command that stopped reading then fails
// with a broken pipe, and waiting for a command to read its last bytes or to exit stops too.
//
// REQUIRES: SIGPIPE is ignored (the app does so), so a command that exits early shows as EPIPE.
// Thread-safety: open/finish/abandon may be called from several lanes for different files.
#pragma once

#include "write_stage.h"

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <sys/types.h>
#include <thread>

namespace shardshift {

/// `text` as one shell word: in single quotes, with each ' written as '\''.
std::string shell_quote(std::string_view text);
/// `command` with {name} and {size} replaced by shell-quoted values (other braces are kept).
std::string expand_command(std::string_view command, std::string_view name, uint64_t size);
/// Refuses (Errc::invalid_argument) a --pipe-to command with {name} or {size} inside single or
/// double quotes: the value comes shell-quoted already, and inside quotes a file name (which the
/// input directory decides) could end them and run as shell code. Bare, the placeholder may
/// still be part of a word (s3://bucket/{name}).
Status check_command_template(std::string_view command);

/// What became of one file handed to a ProcessTarget.
struct Delivery {
  enum State { not_started, delivered, failed } state = not_started;
  std::string detail; ///< failed: why
};

class ProcessTarget final : public OutputTarget {
public:
  /// `command_stdout_to_stderr`: each command's stdout is shardshift's stderr (where shardshift's
  /// own stdout carries results, --json), not its stdout.
  /// `cancel` (may be nullptr): once raised, every command is interrupted (see above), as once
  /// the run has failed (run_failed).
  explicit ProcessTarget(std::string command,
                         std::chrono::milliseconds grace = std::chrono::milliseconds(5000),
                         bool command_stdout_to_stderr = false,
                         const std::atomic<bool>* cancel = nullptr);
  ~ProcessTarget() override;

  Status open(ShardWriter& writer, const OutputFile& file) override;
  Status finish(ShardWriter& writer, const OutputFile& file) override;
  void abandon(ShardWriter& writer, const OutputFile& file) override;
  /// Every command still being fed is interrupted, as after a Ctrl-C: a lane blocked writing
  /// into one that stopped reading then ends, and the failed run with it, rather than when that
  /// command reads again. Commands that were handed their whole file and read it, and are
  /// completing their work (an upload's last part), are left to complete.
  void run_failed() override { run_failed_ = true; }

  /// Delivers a small file held in memory (a side file, the index, SHA256SUMS) the same way:
  /// its own command, its bytes on stdin, delivered only if the command then exits 0.
  Status deliver(const std::string& name, std::string_view bytes, Io& io);
  /// The outcome of `name` so far (not_started if it was never opened).
  Delivery outcome(const std::string& name) const;

private:
  struct Child {
    pid_t pid = -1;    ///< `sh -c COMMAND`, in the guard's process group
    int stdin_fd = -1; ///< the write end of its stdin
    pid_t guard = -1;  ///< leads the group; holds a second write end until told to let go
    int lifeline = -1; ///< to the guard: a line = "let go"; end of file = "interrupt the group"
  };
  Status start(const std::string& name, uint64_t size, const std::string& command, Child& child);
  static void release_guard(Child& child);
  Child take(const std::string& name);
  std::string interrupt(Child& child, int* wait_status = nullptr);

  bool cancelled() const { return cancel_ && cancel_->load(); }
  /// Commands still being fed are to be interrupted: a Ctrl-C, or the run failed.
  bool stopping() const { return cancelled() || run_failed_.load(); }
  void watch();

  std::string command_;
  std::chrono::milliseconds grace_;
  bool command_stdout_to_stderr_ = false;
  const std::atomic<bool>* cancel_ = nullptr;
  std::atomic<bool> quit_{false};       ///< the watcher ends
  std::atomic<bool> run_failed_{false}; ///< run_failed() was called
  std::thread watcher_;
  mutable std::mutex mu_;
  std::map<std::string, Child> children_;    ///< by file name, while open
  std::map<std::string, Delivery> outcomes_; ///< by file name, once opened
  void set_outcome(const std::string& name, Delivery::State state, std::string detail = {});
};

} // namespace shardshift
