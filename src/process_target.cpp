// process_target.cpp: starting, feeding, and ending (or interrupting) one command per file.
#include "process_target.h"

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <functional>
#include <poll.h>
#include <set>
#include <spawn.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <utility>
#include <vector>

extern char** environ;

namespace shardshift {

std::string shell_quote(std::string_view text) {
  std::string out = "'";
  for (char c : text)
    out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string expand_command(std::string_view command, std::string_view name, uint64_t size) {
  std::string out;
  for (size_t i = 0; i < command.size(); ++i) {
    if (command.substr(i).starts_with("{name}")) {
      out += shell_quote(name);
      i += 5;
    } else if (command.substr(i).starts_with("{size}")) {
      out += std::to_string(size);
      i += 5;
    } else {
      out += command[i];
    }
  }
  return out;
}

Status check_command_template(std::string_view command) {
  auto refuse = [&](std::string_view placeholder, const std::string& where) {
    return Status(Errc::invalid_argument,
                  "--pipe-to: " + std::string(placeholder) + " stands " + where + " in '" +
                      std::string(command) +
                      "'; shardshift shell-quotes the value, which protects it only as a word of "
                      "the command, and a file name could otherwise run as shell code: write it "
                      "bare, as in cat > dir/{name} or s3://bucket/prefix/{name}");
  };
  auto placeholder_at = [&](size_t i) -> std::string_view {
    for (std::string_view p : {"{name}", "{size}"})
      if (command.substr(i).starts_with(p))
        return p;
    return {};
  };
  // The context the scan is inside: a quote (', "), arithmetic ('a': $(( )), (( ))) or none,
  // one entry per $( ) it has entered: a command substitution starts unquoted again, even inside
  // double quotes.
  std::vector<char> quotes = {0};
  bool heredoc = false; // a here-document began: its body is not shell words
  bool any = false;     // a placeholder was seen
  for (size_t i = 0; i < command.size(); ++i) {
    char& quote = quotes.back();
    const char c = command[i];
    if (const std::string_view p = placeholder_at(i); !p.empty()) {
      any = true;
      if (heredoc)
        return refuse(p, "after a here-document ('<<'), whose body is not quoted as words are");
      if (quote == 'a')
        return refuse(p, "in an arithmetic expression ($(( )) or (( ))), which bash evaluates, "
                         "array subscripts and the command substitutions in them included");
      if (quote != 0)
        return refuse(p, "inside quotes");
    }
    if (quote != '\'' && c == '\\') {
      if (const std::string_view p = placeholder_at(i + 1); !p.empty())
        return refuse(p, "after a backslash, which would take the quote that begins the value "
                         "as a plain character");
      ++i; // an escaped character, in no quotes or in double quotes
    } else if ((quote == 0 || quote == '"') && command.substr(i).starts_with("$((")) {
      quotes.push_back('a');
      i += 2;
    } else if (quote == 0 && command.substr(i).starts_with("((")) {
      quotes.push_back('a');
      ++i;
    } else if (quote == 'a' && command.substr(i).starts_with("))")) {
      quotes.pop_back();
      ++i;
    } else if (quote != '\'' && quote != 'a' && command.substr(i).starts_with("$(")) {
      quotes.push_back(0);
      ++i;
    } else if (quote == 0 && c == ')' && quotes.size() > 1) {
      quotes.pop_back();
    } else if (quote == 0 && (c == '\'' || c == '"')) {
      quote = c;
    } else if (c == quote && quote != 'a') {
      quote = 0;
    } else if (quote == 0 && command.substr(i).starts_with("<<<")) {
      i += 2; // a here-string (bash) takes a word, quoted like any other
    } else if (quote == 0 && command.substr(i).starts_with("<<")) {
      heredoc = true;
      ++i;
    } else if (quote == 0 && c == '#' &&
               (i == 0 ||
                std::string_view(" \t\n;&|()<>").find(command[i - 1]) != std::string_view::npos)) {
      // A comment, to the end of its line: a line break in a name would end it.
      for (; i < command.size() && command[i] != '\n'; ++i)
        if (const std::string_view p = placeholder_at(i); !p.empty())
          return refuse(p, "in a comment");
    }
  }
  // A template that ends inside quotes would have the value's own quotes close them.
  if (any && (quotes.size() > 1 || quotes.back() != 0))
    return Status(Errc::invalid_argument,
                  "--pipe-to: '" + std::string(command) +
                      "' ends inside quotes, an arithmetic expression or a $( ), where a file "
                      "name could end them and run as shell code; close them");
  return {};
}

namespace {

// How a finished child ended, for messages.
std::string describe_exit(int status) {
  if (WIFEXITED(status))
    return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status))
    return std::string("was killed by signal ") + strsignal(WTERMSIG(status));
  return "ended abnormally";
}

// Waits until the command has read everything written into its pipe, or has exited, whichever
// comes first, or `stop` says so while bytes are still unread (*stopped). Returns the bytes it left
// unread (0 once drained); *exited says whether it ended (and *status how). FIONREAD counts what is
// in the pipe from either end.
uint64_t wait_until_read(pid_t pid, int pipe_fd, const std::function<bool()>& stop, bool* exited,
                         int* status, bool* stopped) {
  auto delay = std::chrono::microseconds(100);
  for (;;) {
    int unread = 0;
    if (ioctl(pipe_fd, FIONREAD, &unread) != 0)
      unread = 0; // cannot tell: as before, the exit status alone decides
    if (unread == 0 && !*exited)
      return 0;
    if (*exited)
      return static_cast<uint64_t>(std::max(unread, 0));
    // Asked only while bytes wait unread: a command that has read them all is not stopped here
    // (after a Ctrl-C, the caller still interrupts it while it completes).
    if (stop()) {
      *stopped = true;
      return 0;
    }
    const pid_t r = waitpid(pid, status, WNOHANG);
    *exited = r == pid || (r < 0 && errno != EINTR);
    if (!*exited) {
      std::this_thread::sleep_for(delay);
      delay = std::min(delay * 2, std::chrono::microseconds(10'000));
    }
  }
}

// Whether any process still holds the read end of the pipe whose write end is `fd`: once none
// does, the write end polls POLLERR. A poll that fails counts as a reader (signal on).
bool has_reader(int fd) {
  if (fd < 0) // no pipe of ours left to ask about
    return false;
  pollfd p{fd, POLLOUT, 0};
  return poll(&p, 1, 0) < 0 || (p.revents & POLLERR) == 0;
}

} // namespace

ProcessTarget::ProcessTarget(std::string command, std::chrono::milliseconds grace,
                             bool command_stdout_to_stderr, const std::atomic<bool>* cancel)
    : command_(std::move(command)), grace_(grace),
      command_stdout_to_stderr_(command_stdout_to_stderr), cancel_(cancel) {
  watcher_ = std::thread([this] { watch(); });
}

ProcessTarget::~ProcessTarget() {
  quit_ = true;
  if (watcher_.joinable())
    watcher_.join();
  // Files still open here were neither finished nor abandoned (an exception, a bug): interrupt.
  for (auto& [name, child] : children_)
    interrupt(child);
}

namespace {

// After a Ctrl-C (or the run's failure), what a command's group gets `waited` after the first
// signal: SIGINT at once, SIGTERM after the grace period, SIGKILL after two (0: nothing new).
int escalation(std::chrono::steady_clock::duration waited, std::chrono::milliseconds grace,
               int last) {
  const int due = waited >= 2 * grace ? SIGKILL : waited >= grace ? SIGTERM : SIGINT;
  return due == last ? 0 : due;
}

} // namespace

// Once the cancel flag is up, or the run has failed, each command still being fed gets SIGINT,
// then SIGTERM and SIGKILL after the grace periods while it still runs: the lane writing into
// it, blocked on a full pipe, then sees the command stop reading (a broken pipe) and abandons
// the file (interrupt()).
void ProcessTarget::watch() {
  struct Sent {
    std::chrono::steady_clock::time_point first;
    int last = 0;
  };
  std::map<pid_t, Sent> sent;
  while (!quit_.load()) {
    if (stopping()) {
      const auto now = std::chrono::steady_clock::now();
      std::lock_guard lock(mu_);
      for (const auto& [name, child] : children_) {
        if (child.guard <= 0)
          continue;
        Sent& s = sent.try_emplace(child.guard, Sent{now, 0}).first->second;
        if (const int sig = escalation(now - s.first, grace_, s.last)) {
          kill(-child.guard, sig);
          s.last = sig;
        }
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

Status ProcessTarget::open(ShardWriter& writer, const OutputFile& file) {
  const std::string command = expand_command(command_, file.name, file.size());
  Child child;
  if (Status s = start(file.name, file.size(), command, child); !s.ok())
    return s;
  {
    std::lock_guard lock(mu_);
    children_[file.name] = child;
  }
  return writer.open_stream(child.stdin_fd, file.name, file.header, file.data_size);
}

namespace {

// The guard's script. It leads the command's process group and ignores the signals that
// shardshift sends the group to interrupt the command (it dies with the SIGKILL, as the command
// does). fd 3 is a second write end of the command's stdin, fd 4 the lifeline's read end, $1 the
// grace period in seconds. A line on the lifeline means "let go"; its end without one means that
// shardshift is gone: the command must not take what it read for a complete input, so the guard
// interrupts the group, then terminates it, then kills it and itself with it, holding fd 3 to
// the end.
constexpr const char* kGuardScript = "trap '' INT TERM\n"
                                     "if read -r word <&4; then exit 0; fi\n"
                                     "kill -s INT 0\n"
                                     "sleep \"$1\"\n"
                                     "kill -s TERM 0\n"
                                     "sleep \"$1\"\n"
                                     "kill -s KILL 0\n";

// posix_spawn of /bin/sh with `args`, in process group `group` (0: a new one), SIGINT,
// SIGTERM, SIGPIPE and SIGXFSZ at their defaults and no signal blocked (an uploader must be
// interruptible whatever its starter had, and start as a shell would start it), after the dup2s
// `moves` (from, to) and, with `quiet_stdio`, stdin and stdout on /dev/null. Returns 0 or an
// errno.
int spawn_sh(const std::vector<std::string>& args, const std::vector<std::pair<int, int>>& moves,
             bool quiet_stdio, pid_t group, pid_t* pid,
             const std::vector<std::string>& extra_env = {}) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (quiet_stdio) {
    posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
  }
  for (auto [from, to] : moves)
    posix_spawn_file_actions_adddup2(&actions, from, to);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, defaults;
  sigemptyset(&none);
  sigemptyset(&defaults);
  sigaddset(&defaults, SIGINT);
  sigaddset(&defaults, SIGTERM);
  sigaddset(&defaults, SIGPIPE); // ignored here (apps/signals.h); a command starts as a shell's
  sigaddset(&defaults, SIGXFSZ);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setflags(&attr,
                           POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  posix_spawnattr_setpgroup(&attr, group);
  std::vector<char*> argv;
  for (const std::string& a : args)
    argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  // This process's environment, with `extra_env` ("NAME=value") in place of any of those names.
  std::vector<char*> envp;
  for (char** e = environ; *e; ++e)
    if (std::none_of(extra_env.begin(), extra_env.end(), [e](const std::string& x) {
          return std::string_view(*e).starts_with(x.substr(0, x.find('=') + 1));
        }))
      envp.push_back(*e);
  for (const std::string& x : extra_env)
    envp.push_back(const_cast<char*>(x.c_str()));
  envp.push_back(nullptr);
  const int rc = posix_spawn(pid, "/bin/sh", &actions, &attr, argv.data(), envp.data());
  posix_spawnattr_destroy(&attr);
  posix_spawn_file_actions_destroy(&actions);
  return rc;
}

} // namespace

// Starts the guard (a new process group) holding a second write end of a pipe, then the command
// in the guard's group with that pipe on its stdin. The guard comes first, so there is no moment
// at which the command runs and shardshift's death would close its input. Every descriptor is
// close-on-exec, so no other file's command or guard inherits one (an inherited write end would
// hide this pipe's end of input; an inherited lifeline would hide shardshift's death).
Status ProcessTarget::start(const std::string& name, uint64_t size, const std::string& command,
                            Child& child) {
  auto fail = [&](const std::string& what, int err) {
    return Status(Errc::io, name + ": " + what + ": " + errno_text(err));
  };
  int data[2], life[2];
  if (pipe2(data, O_CLOEXEC) != 0)
    return fail("cannot create a pipe for the command", errno);
  if (pipe2(life, O_CLOEXEC) != 0) {
    const int err = errno;
    close(data[0]);
    close(data[1]);
    return fail("cannot create a pipe for the command", err);
  }
  child.stdin_fd = data[1];
  child.lifeline = life[1];
  // Copies at 10 and above first, so that the dup2s to 3 and 4 cannot overwrite each other.
  const int held = fcntl(data[1], F_DUPFD_CLOEXEC, 10);
  const int lifeline_in = held < 0 ? -1 : fcntl(life[0], F_DUPFD_CLOEXEC, 10);
  int rc = lifeline_in < 0 ? errno : 0;
  close(life[0]);
  const std::string grace_s = std::to_string(grace_.count() / 1000) + "." +
                              std::to_string(1000 + grace_.count() % 1000).substr(1);
  if (rc == 0)
    rc = spawn_sh({"sh", "-c", kGuardScript, "shardshift-guard", grace_s},
                  {{held, 3}, {lifeline_in, 4}}, true, 0, &child.guard);
  for (int fd : {held, lifeline_in})
    if (fd >= 0)
      close(fd);
  if (rc != 0) {
    child.guard = -1;
    for (int fd : {data[0], data[1], life[1]})
      close(fd);
    return fail("cannot start the guard of the command '" + command + "'", rc);
  }
  // The command's group is the guard's: signals reach the shell and whatever it started (the
  // uploader), and a Ctrl-C at the terminal reaches shardshift alone, which then decides each
  // file's fate.
  std::vector<std::pair<int, int>> moves = {{data[0], STDIN_FILENO}};
  if (command_stdout_to_stderr_)
    moves.emplace_back(STDERR_FILENO, STDOUT_FILENO);
  rc = spawn_sh({"sh", "-c", command}, moves, false, child.guard, &child.pid,
                {"SHARDSHIFT_NAME=" + name, "SHARDSHIFT_SIZE=" + std::to_string(size)});
  close(data[0]);
  if (rc != 0) {
    child.pid = -1;
    close(child.stdin_fd);
    child.stdin_fd = -1;
    release_guard(child);
    return fail("cannot start the command '" + command + "'", rc);
  }
  return {};
}

// Tells the guard to let go of its write end (the input is complete, or the command has ended)
// and reaps it.
void ProcessTarget::release_guard(Child& child) {
  if (child.lifeline >= 0) {
    [[maybe_unused]] ssize_t n = write(child.lifeline, "done\n", 5); // EPIPE: it is gone
    close(child.lifeline);
    child.lifeline = -1;
  }
  if (child.guard > 0) {
    int status = 0;
    while (waitpid(child.guard, &status, 0) < 0 && errno == EINTR) {
    }
    child.guard = -1;
  }
}

ProcessTarget::Child ProcessTarget::take(const std::string& name) {
  std::lock_guard lock(mu_);
  auto it = children_.find(name);
  if (it == children_.end())
    return {};
  Child c = it->second;
  children_.erase(it);
  return c;
}

void ProcessTarget::set_outcome(const std::string& name, Delivery::State state,
                                std::string detail) {
  std::lock_guard lock(mu_);
  outcomes_[name] = Delivery{state, std::move(detail)};
}

Delivery ProcessTarget::outcome(const std::string& name) const {
  std::lock_guard lock(mu_);
  auto it = outcomes_.find(name);
  return it == outcomes_.end() ? Delivery{} : it->second;
}

Status ProcessTarget::deliver(const std::string& name, std::string_view bytes, Io& io) {
  OutputFile file;
  file.name = name;
  file.header = std::string(bytes); // the whole file; no tensor data follows
  ShardWriter writer(io);
  if (Status s = open(writer, file); !s.ok()) {
    abandon(writer, file);
    return s;
  }
  return finish(writer, file);
}

Status ProcessTarget::finish(ShardWriter& writer, const OutputFile& file) {
  // Checks that every planned byte went in; the inputs are checked below, once read.
  Status written = writer.finish(/*check=*/false);
  Child child = take(file.name);
  if (child.pid < 0)
    return written.ok() ? Status(Errc::io, file.name + ": internal: no command for this file")
                        : written;
  if (!written.ok()) {
    interrupt(child);
    set_outcome(file.name, Delivery::failed, written.message());
    return written;
  }
  // Delivered means read to the end: a command that exits 0 with bytes still in its pipe (one
  // that stopped reading early but reports success) must not count as an upload of the file.
  int status = 0;
  bool exited = false, stopped = false;
  const uint64_t unread = wait_until_read(
      child.pid, child.stdin_fd, [this] { return stopping(); }, &exited, &status, &stopped);
  if (stopped) { // Ctrl-C, or the run failed, before the command read it all: signalled before
                 // its input ends
    interrupt(child);
    if (!cancelled()) {
      set_outcome(file.name, Delivery::failed,
                  "not finished: the run failed, so its command was interrupted");
      return Status(Errc::io, file.name + ": not delivered: the run failed");
    }
    set_outcome(file.name, Delivery::failed, "interrupted; its command was interrupted");
    return Status(Errc::interrupted, "interrupted");
  }
  // The bytes it read were the inputs' pages until then (splice): an input written to meanwhile
  // fails the file before its input ends.
  if (Status s = writer.final_check(); !s.ok()) {
    interrupt(child);
    set_outcome(file.name, Delivery::failed, s.message());
    return s;
  }
  const pid_t group = child.guard;
  close(child.stdin_fd); // the end of input: the command may now complete its work,
  release_guard(child);  // once its guard has let go too
  // The command read every byte and completes its work (an upload's last part, say); a Ctrl-C
  // meanwhile interrupts it, and the file is not delivered, however it then ends.
  int last = 0;
  std::chrono::steady_clock::time_point first;
  while (!exited) {
    const pid_t r = waitpid(child.pid, &status, WNOHANG);
    exited = r == child.pid || (r < 0 && errno != EINTR);
    if (exited)
      break;
    if (cancelled()) {
      const auto now = std::chrono::steady_clock::now();
      if (last == 0)
        first = now;
      if (const int sig = escalation(now - first, grace_, last)) {
        kill(-group, sig);
        last = sig;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (last != 0) {
    set_outcome(file.name, Delivery::failed,
                "interrupted after it read every byte; its command " + describe_exit(status));
    return Status(Errc::interrupted, "interrupted");
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0 && unread == 0) {
    set_outcome(file.name, Delivery::delivered);
    return {};
  }
  const std::string why = "the command " + describe_exit(status);
  set_outcome(file.name, Delivery::failed,
              unread ? why + " without reading the last " + std::to_string(unread) + " bytes"
                     : why);
  return Status(Errc::io,
                file.name + ": " + why +
                    (unread ? " without reading the last " + std::to_string(unread) + " of its " +
                                  std::to_string(file.size()) + " bytes"
                            : " after reading all " + std::to_string(file.size()) + " bytes") +
                    "; the file is not delivered");
}

void ProcessTarget::abandon(ShardWriter& writer, const OutputFile& file) {
  Child child = take(file.name);
  std::string ended;
  int status = 0;
  const bool had_command = child.pid >= 0;
  if (had_command)
    ended = interrupt(child, &status);
  writer.abandon();
  if (outcome(file.name).state == Delivery::failed)
    return;
  // A command that quit on its own shows first as a broken pipe, or not at all where nothing
  // more was written; how it ended says more. One that the run's failure interrupted (it died of
  // the signal, or exited 0 at it) is said to be that.
  const Status& why = writer.status();
  const bool run_failed = run_failed_.load() && !cancelled();
  const bool own_failure = had_command && WIFEXITED(status) && WEXITSTATUS(status) != 0;
  std::string detail;
  if (!why.ok() && why.code() != Errc::broken_pipe)
    detail = why.message();
  else if (run_failed && !own_failure)
    detail = "not finished: the run failed, so its command was interrupted";
  else if ((why.code() == Errc::broken_pipe || run_failed) && !ended.empty())
    detail = "the command " + ended + " before reading all of it";
  else
    detail = "stopped before its end; its command was interrupted";
  set_outcome(file.name, Delivery::failed, std::move(detail));
}

// Signals first, pipe last: while the command still has its stdin open it cannot mistake the
// interruption for a complete input. Whatever still holds the pipe's read end is signalled too,
// not only the shell: a job the command left running in the background reads on after the shell
// has exited, and would take the closing of its input for the end of a whole file. Each signal
// goes to the whole group (the shell, what it started, the guard); the next one follows unless
// the shell has ended and no reader is left within the grace period. Returns how the command
// ended ("exited with status 3"), and its wait status in *wait_status where given.
std::string ProcessTarget::interrupt(Child& child, int* wait_status) {
  int status = 0;
  bool gone = waitpid(child.pid, &status, WNOHANG) == child.pid;
  auto ended = [&] { return gone && !has_reader(child.stdin_fd); };
  for (int sig : {SIGINT, SIGTERM, SIGKILL}) {
    if (ended())
      break;
    kill(-child.guard, sig);
    // The shell gets 60 s to die of SIGKILL; a reader outside the group cannot be signalled,
    // so it is given the grace period only.
    const auto start = std::chrono::steady_clock::now();
    const auto shell_limit = sig == SIGKILL ? std::chrono::milliseconds(60'000) : grace_;
    for (;;) {
      if (!gone)
        gone = waitpid(child.pid, &status, WNOHANG) == child.pid;
      const auto waited = std::chrono::steady_clock::now() - start;
      if (ended() || (gone && waited >= grace_) || (!gone && waited >= shell_limit))
        break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  close(child.stdin_fd);
  if (!gone)
    waitpid(child.pid, &status, 0);
  release_guard(child);
  child = {};
  if (wait_status)
    *wait_status = status;
  return describe_exit(status);
}

} // namespace shardshift
