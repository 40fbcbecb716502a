// mapped_file.cpp: read-only mappings of input files, and the SIGBUS guard.
//
// Why a guard: a MAP_SHARED mapping stays valid when another process truncates the file, but any
// page past the new end raises SIGBUS when touched. For a conversion that streams tens of gigabytes
// that is a realistic failure (a download still being written, a file replaced in place), and a
// crash with "Bus error" tells the user nothing. The guard turns it into Errc::file_changed. A
// file rewritten in place at the same size raises nothing; MappedFile::unchanged() tells it by
// its times, and the pipeline asks before its output can count as finished.
#include "shardshift/mapped_file.h"

#include <atomic>
#include <cerrno>
#include <csetjmp>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <mutex>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace shardshift {

namespace {

uint64_t page_size() {
  static const uint64_t size = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  return size;
}

int64_t nanoseconds(const timespec& t) {
  return static_cast<int64_t>(t.tv_sec) * 1'000'000'000 + t.tv_nsec;
}

} // namespace

Result<std::unique_ptr<MappedFile>> MappedFile::open(const std::filesystem::path& path) {
  std::unique_ptr<MappedFile> file(new MappedFile());
  file->path_ = path.string();
  file->fd_ = ::open(file->path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (file->fd_ < 0)
    return error(Errc::io, file->path_ + ": cannot open: " + errno_text(errno));

  struct stat st;
  if (fstat(file->fd_, &st) != 0)
    return error(Errc::io, file->path_ + ": cannot stat: " + errno_text(errno));
  if (!S_ISREG(st.st_mode))
    return error(Errc::io, file->path_ + ": not a regular file");
  file->size_ = static_cast<uint64_t>(st.st_size);
  file->modified_ns_ = nanoseconds(st.st_mtim);

  // mmap of length 0 fails with EINVAL; an empty file simply has an empty span.
  if (file->size_ == 0)
    return file;

  void* p = mmap(nullptr, file->size_, PROT_READ, MAP_SHARED, file->fd_, 0);
  if (p == MAP_FAILED)
    return error(Errc::io, file->path_ + ": cannot map: " + errno_text(errno));
  file->data_ = static_cast<const std::byte*>(p);
  // Inputs are read front to back, once: ask for aggressive read-ahead and early reclaim.
  // Advice is a hint; failure changes only speed.
  (void)madvise(p, file->size_, MADV_SEQUENTIAL);
  return file;
}

MappedFile::~MappedFile() {
  if (data_)
    munmap(const_cast<std::byte*>(data_), size_);
  if (fd_ >= 0)
    ::close(fd_);
}

Status MappedFile::unchanged() const {
  struct stat st;
  if (fstat(fd_, &st) != 0)
    return error(Errc::io, path_ + ": cannot stat: " + errno_text(errno));
  // Size and modification time: a write moves the time. The change time is not asked: it also
  // moves for what leaves the bytes alone (chmod, a new hard link, touch -a).
  if (static_cast<uint64_t>(st.st_size) == size_ && nanoseconds(st.st_mtim) == modified_ns_)
    return {};
  return error(Errc::file_changed,
               path_ + ": file changed while reading (it was written to after it was opened: " +
                   (static_cast<uint64_t>(st.st_size) != size_
                        ? "its size went from " + std::to_string(size_) + " to " +
                              std::to_string(st.st_size) + " bytes"
                        : std::string("its modification time moved")) +
                   "); the output would match neither version; re-run when no other process is "
                   "writing it");
}

Result<std::span<const std::byte>> MappedFile::view(uint64_t offset, uint64_t length) const {
  // Written as two comparisons so offset + length can never wrap.
  if (offset > size_ || length > size_ - offset) {
    return error(Errc::format, path_ + ": byte range [" + std::to_string(offset) + ", " +
                                   std::to_string(offset) + " + " + std::to_string(length) +
                                   ") is outside the file (size " + std::to_string(size_) + ")");
  }
  return std::span<const std::byte>(data_ + offset, length);
}

void MappedFile::release(uint64_t offset, uint64_t length) const {
  if (!data_ || offset >= size_)
    return;
  uint64_t end = length > size_ - offset ? size_ : offset + length;
  // Only pages entirely inside the range: a page shared with a neighbouring tensor may still be
  // needed by whoever reads that tensor.
  uint64_t page = page_size();
  uint64_t first = (offset + page - 1) / page * page;
  uint64_t last = end / page * page;
  if (end == size_)
    last = end; // the file's final partial page belongs to nobody else
  if (last <= first)
    return;
  (void)madvise(const_cast<std::byte*>(data_) + first, last - first, MADV_DONTNEED);
}

void MappedFile::populate(uint64_t offset, uint64_t length) const {
#ifdef MADV_POPULATE_READ
  if (!data_ || offset >= size_)
    return;
  uint64_t end = length > size_ - offset ? size_ : offset + length;
  uint64_t first = offset / page_size() * page_size();
  // EINVAL on kernels before 5.14: the pages then fault in one by one as they are read.
  (void)madvise(const_cast<std::byte*>(data_) + first, end - first, MADV_POPULATE_READ);
#else
  (void)offset;
  (void)length;
#endif
}

void MappedFile::will_need(uint64_t offset, uint64_t length) const {
  if (!data_ || offset >= size_)
    return;
  uint64_t end = length > size_ - offset ? size_ : offset + length;
  uint64_t page = page_size();
  uint64_t first = offset / page * page; // madvise wants a page-aligned start
  (void)madvise(const_cast<std::byte*>(data_) + first, end - first, MADV_WILLNEED);
}

// ---------------------------------------------------------------------------------------------
// SIGBUS guard.
//
// Each thread has a pointer to the jump buffer of its innermost active guard. The handler only
// reads that thread-local pointer and calls siglongjmp or sigaction/raise, all async-signal-safe.
// The pointer is a plain trivially-initialised thread_local in the executable, so reading it needs
// no lazy TLS initialisation inside the handler.

namespace {

thread_local sigjmp_buf* t_guard_jump = nullptr;
thread_local const void* t_fault_address = nullptr; // of the last SIGBUS a guard caught

struct sigaction g_previous_action;
std::once_flag g_install_once;

void sigbus_handler(int sig, siginfo_t* info, void* context) {
  sigjmp_buf* jump = t_guard_jump;
  if (jump != nullptr) {
    t_fault_address = info != nullptr ? info->si_addr : nullptr;
    siglongjmp(*jump, 1);
  }

  // Not ours: give the signal to whoever had it before (normally the default action, which ends
  // the process with "Bus error"). For a fault, returning re-executes the faulting access, which
  // then raises SIGBUS under the restored action; a signal sent by kill() must be raised again.
  sigaction(SIGBUS, &g_previous_action, nullptr);
  if (info == nullptr || info->si_code <= 0) {
    raise(sig);
    return;
  }
  (void)context;
}

void install_sigbus_handler() {
  std::call_once(g_install_once, [] {
    struct sigaction action;
    std::memset(&action, 0, sizeof action);
    action.sa_sigaction = sigbus_handler;
    action.sa_flags = SA_SIGINFO;
    sigemptyset(&action.sa_mask);
    sigaction(SIGBUS, &action, &g_previous_action);
  });
}

} // namespace

Status file_changed_error(const std::string& path) {
  return error(Errc::file_changed,
               path + ": file changed while reading (it shrank or was truncated while "
                      "mapped); re-run when no other process is writing it");
}

bool run_catching_sigbus(const std::function<void()>& fn) {
  install_sigbus_handler();
  sigjmp_buf jump;
  sigjmp_buf* const outer = t_guard_jump;
  // savemask = 1: the handler runs with SIGBUS blocked; siglongjmp must unblock it again.
  if (sigsetjmp(jump, 1) != 0) {
    t_guard_jump = outer;
    return false;
  }
  t_guard_jump = &jump;
  try {
    fn();
  } catch (...) {
    t_guard_jump = outer;
    throw;
  }
  t_guard_jump = outer;
  return true;
}

const void* last_sigbus_address() {
  return t_fault_address;
}

Status guard_mapped_access(const MappedFile& file, const std::function<void()>& fn) {
  if (!run_catching_sigbus(fn))
    return file_changed_error(file.path());
  return {};
}

} // namespace shardshift
