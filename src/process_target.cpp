// process_target.cpp: starting, feeding, and ending (or interrupting) one command per file.
#include "process_target.h"

#include <cerrno>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

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

namespace {

// How a finished child ended, for messages.
std::string describe_exit(int status) {
  if (WIFEXITED(status))
    return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status))
    return std::string("was killed by signal ") + strsignal(WTERMSIG(status));
  return "ended abnormally";
}

// Waits up to `limit` for `pid`; true (and *status set) when it has exited.
bool wait_for(pid_t pid, std::chrono::milliseconds limit, int* status) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  for (;;) {
    const pid_t r = waitpid(pid, status, WNOHANG);
    if (r == pid || (r < 0 && errno != EINTR))
      return true;
    if (std::chrono::steady_clock::now() >= deadline)
      return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

} // namespace

ProcessTarget::~ProcessTarget() {
  // Files still open here were neither finished nor abandoned (an exception, a bug): interrupt.
  for (auto& [name, child] : children_)
    interrupt(child);
}

Status ProcessTarget::open(ShardWriter& writer, const OutputFile& file) {
  const std::string command = expand_command(command_, file.name, file.size());
  // The write end is close-on-exec, so no other file's command inherits it (an inherited copy
  // would keep this pipe open and hide its end of input).
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0)
    return Status(Errc::io,
                  file.name + ": cannot create a pipe for the command: " + errno_text(errno));
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[0], STDIN_FILENO);
  // Its own process group: signals reach the shell and whatever it started (the uploader), and a
  // Ctrl-C at the terminal reaches shardshift alone, which then decides each file's fate.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
  posix_spawnattr_setpgroup(&attr, 0);
  const char* argv[] = {"sh", "-c", command.c_str(), nullptr};
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, "/bin/sh", &actions, &attr, const_cast<char**>(argv), environ);
  posix_spawnattr_destroy(&attr);
  posix_spawn_file_actions_destroy(&actions);
  close(fds[0]);
  if (rc != 0) {
    close(fds[1]);
    return Status(Errc::io,
                  file.name + ": cannot start the command '" + command + "': " + errno_text(rc));
  }
  {
    std::lock_guard lock(mu_);
    children_[file.name] = Child{pid, fds[1]};
  }
  return writer.open_stream(fds[1], file.name, file.header, file.data_size);
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
  Status written = writer.finish(); // checks that every planned byte went in
  Child child = take(file.name);
  if (child.pid < 0)
    return written.ok() ? Status(Errc::io, file.name + ": internal: no command for this file")
                        : written;
  if (!written.ok()) {
    interrupt(child);
    set_outcome(file.name, Delivery::failed, written.message());
    return written;
  }
  close(child.stdin_fd); // the end of input: the command may now complete its work
  int status = 0;
  while (waitpid(child.pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
    set_outcome(file.name, Delivery::delivered);
    return {};
  }
  const std::string why = "the command " + describe_exit(status);
  set_outcome(file.name, Delivery::failed, why);
  return Status(Errc::io, file.name + ": " + why + " after reading all " +
                              std::to_string(file.size()) + " bytes; the file is not delivered");
}

void ProcessTarget::abandon(ShardWriter& writer, const OutputFile& file) {
  Child child = take(file.name);
  std::string ended;
  if (child.pid >= 0)
    ended = interrupt(child);
  writer.abandon();
  if (outcome(file.name).state == Delivery::failed)
    return;
  // A command that quit on its own shows first as a broken pipe; how it ended says more.
  const Status& why = writer.status();
  set_outcome(file.name, Delivery::failed,
              why.code() == Errc::broken_pipe && !ended.empty()
                  ? "the command " + ended + " before reading all of it"
              : why.ok() ? "stopped before its end; its command was interrupted"
                         : why.message());
}

// Signals first, pipe last: while the command still has its stdin open it cannot mistake the
// interruption for a complete input. Returns how the command ended ("exited with status 3").
std::string ProcessTarget::interrupt(Child& child) {
  int status = 0;
  bool gone = waitpid(child.pid, &status, WNOHANG) == child.pid;
  for (int sig : {SIGINT, SIGTERM, SIGKILL}) {
    if (gone)
      break;
    kill(-child.pid, sig); // the whole group: the shell and the command it runs
    gone =
        wait_for(child.pid, sig == SIGKILL ? std::chrono::milliseconds(60'000) : grace_, &status);
  }
  close(child.stdin_fd);
  if (!gone)
    waitpid(child.pid, &status, 0);
  child = {};
  return describe_exit(status);
}

} // namespace shardshift
