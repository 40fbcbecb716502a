// mpi_coordinator.cpp: the ranks of a job started by Open MPI's mpirun, coordinated through MPI
// (coordinator.h). Every MPI call of shardshift is in this file. Each exchange is a non-blocking
// collective on a communicator of our own (a duplicate of MPI_COMM_WORLD, so that a program that
// embeds the library and uses MPI itself never sees our messages), polled with MPI_Test and a
// short sleep, so that Ctrl-C (the cancel flag) and --job-timeout act while a rank waits:
//
//   agree_on_plan  allgather of (plan fingerprint, OUT's path's digest, rank and world from the
//                  environment): every rank checks every other, so a mismatch is an error on all
//                  of them at once; where the OUTs differ, an allgatherv of the paths names them;
//   begin          allgather of rank 0's check (a random nonce it wrote into the staging
//                  directory), then of what every rank read back there and its host's name:
//                  every rank must see the directory rank 0 made, not one on its own node;
//   end_share      allgather of (ok or failed, length), then allgatherv of the texts (the files'
//                  digests, or the failure): rank 0 learns which rank failed and why;
//   tell/learn     broadcast from rank 0 of the commit's outcome, so every rank exits alike.
//
// A rank that gives up (interrupted, or --job-timeout) leaves its collective open, so it must not
// call MPI_Finalize (which would wait for ranks that may never come): it returns its error and
// the process exits non-zero, and mpirun then ends the job's other ranks with SIGTERM, which they
// handle as Ctrl-C (rank 0 removes the staging directory). Every other way out finalizes.
#include "coordinator.h"
#include "sha256.h"

#include <chrono>
#include <cstring>
#include <fcntl.h>
#include <random>
#include <string_view>
#include <thread>
#include <unistd.h>

#if SHARDSHIFT_HAVE_MPI
#include <mpi.h>
#endif

namespace shardshift {

#if SHARDSHIFT_HAVE_MPI

namespace {

// MPI_Test between sleeps this long: each round of a collective needs a call on every rank.
constexpr auto POLL = std::chrono::milliseconds(2);
// A failure's message, as every rank learns it, is cut to this.
constexpr size_t MAX_MESSAGE = 16 * 1024;

// One rank's part of the plan agreement.
struct PlanRecord {
  char fingerprint[64];
  char output[64];      ///< SHA-256 (hex) of OUT's absolute path, as this rank resolved it
  uint32_t rank, world; ///< as detect_rank found them in the environment
};
// One rank's part of the share exchange, before its text.
struct ShareRecord {
  int32_t ok;
  int32_t bytes;
};
// The staging directory check (begin): rank 0's nonce, then what each rank found.
struct CheckRecord {
  int32_t written; ///< rank 0: it wrote the check file; others: they have a staging directory
  char nonce[32];
};
struct SeenRecord {
  int32_t seen; ///< 1: read rank 0's nonce; 0: did not; -1: nothing to check (a failure before)
  char host[64];
};

// Rank 0's broadcast of the outcome, before its message.
struct OutcomeRecord {
  int32_t code; ///< an Errc; 0: committed
  int32_t bytes;
};

std::string mpi_error(int rc) {
  char text[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  MPI_Error_string(rc, text, &length);
  return std::string(text, static_cast<size_t>(length));
}

class MpiCoordinator final : public Coordinator {
public:
  MpiCoordinator(const ConvertOptions& options, const RankInfo& rank)
      : options_(options), rank_(rank),
        who_("rank " + std::to_string(rank.rank) + " of " + std::to_string(rank.world)) {}

  ~MpiCoordinator() override {
    if (abandoned_)
      return; // see the comment at the top
    if (comm_ != MPI_COMM_NULL)
      MPI_Comm_free(&comm_);
    if (we_initialized_)
      MPI_Finalize();
  }

  const char* name() const override { return "MPI"; }

  Status agree_on_plan(const std::string& fingerprint,
                       const std::filesystem::path& output) override {
    if (Status s = init(); !s.ok())
      return s;
    int size = 0;
    MPI_Comm_size(comm_, &size);
    PlanRecord mine{};
    std::memcpy(mine.fingerprint, fingerprint.data(),
                std::min(fingerprint.size(), sizeof mine.fingerprint));
    const std::string path = output.string();
    const std::string path_digest = sha256_hex(std::as_bytes(std::span(path)));
    std::memcpy(mine.output, path_digest.data(), sizeof mine.output);
    mine.rank = rank_.rank;
    mine.world = rank_.world;
    auto gathered = gather(mine, "every rank to plan the output", true);
    if (!gathered)
      return gathered.status();
    const std::vector<PlanRecord>& all = *gathered;
    // Every rank checks every rank, so every rank reports the same problems.
    std::string problems;
    const std::string_view first(all[0].fingerprint, sizeof all[0].fingerprint);
    for (size_t k = 0; k < all.size(); ++k) {
      const PlanRecord& r = all[k];
      if (r.rank != k || r.world != static_cast<uint32_t>(size))
        problems += "\n  MPI rank " + std::to_string(k) + " of " + std::to_string(size) +
                    " found rank " + std::to_string(r.rank) + " of " + std::to_string(r.world) +
                    " in its environment (OMPI_COMM_WORLD_RANK/SIZE were changed)";
      const std::string_view fp(r.fingerprint, sizeof r.fingerprint);
      if (fp != first)
        problems += "\n  rank " + std::to_string(k) + " planned another output than rank 0 " +
                    "(plan fingerprints " + std::string(fp.substr(0, 16)) + " and " +
                    std::string(first.substr(0, 16)) + ")";
    }
    // Ranks that write into different directories would each fill their own staging directory,
    // and rank 0 would commit only its own share: the paths must be one, before anything is
    // written. Every rank saw the same digests, so every rank takes part in naming them or none.
    bool outputs_differ = false;
    for (const PlanRecord& r : all)
      outputs_differ |= std::memcmp(r.output, all[0].output, sizeof r.output) != 0;
    if (outputs_differ) {
      auto paths = gather_texts(path);
      if (!paths)
        return paths.status();
      for (size_t k = 1; k < paths->size(); ++k)
        if ((*paths)[k] != (*paths)[0])
          problems += "\n  rank " + std::to_string(k) + " writes into " + (*paths)[k] +
                      ", rank 0 into " + (*paths)[0];
      problems += "\n  (every rank must name one OUT, on a filesystem they all share: a relative "
                  "OUT is taken from each rank's working directory, which mpirun's -wdir and a "
                  "different directory per node change; give an absolute path)";
    }
    if (!problems.empty())
      return Status(
          Errc::invalid_argument,
          who_ + ": the ranks of this job disagree; every process of a job must be " +
              "given the same input (the same files, unchanged), output directory, " +
              "options and shardshift version, and the launcher's environment:" + problems);
    return {};
  }

  // An OUT on a disk of each node's own (/tmp, /dev/shm, a local NVMe) under the same path on
  // every node passes agree_on_plan, and each node would fill a staging directory of its own:
  // the job would convert everything, and fail only at rank 0's commit with files missing. So
  // rank 0 writes a random nonce into the staging directory, and every rank reads it back.
  Status begin(const std::filesystem::path& staging, const Status& made) override {
    const std::filesystem::path check_file = staging / ".rank-0.shared-check";
    CheckRecord mine{};
    mine.written = made.ok() ? 1 : 0;
    Status own = made;
    if (rank_.rank == 0 && made.ok()) {
      std::random_device rd;
      for (char& c : mine.nonce)
        c = "0123456789abcdef"[rd() % 16];
      own = write_check(check_file, std::string_view(mine.nonce, sizeof mine.nonce));
      mine.written = own.ok() ? 1 : 0;
    }
    auto checks = gather(mine, "every rank to make the staging directory", true);
    if (!checks)
      return checks.status();
    SeenRecord seen{};
    seen.seen = -1;
    if (own.ok() && (*checks)[0].written)
      seen.seen = rank_.rank == 0 ||
                  read_check(check_file) == std::string_view((*checks)[0].nonce, sizeof mine.nonce);
    ::gethostname(seen.host, sizeof seen.host - 1);
    auto gathered = gather(seen, "every rank to check the staging directory", true);
    if (!gathered)
      return gathered.status();
    const std::vector<SeenRecord>& seens = *gathered;
    if (rank_.rank == 0)
      ::unlink(check_file.c_str());
    if (!own.ok())
      return own;
    std::string apart;
    for (size_t k = 1; k < seens.size(); ++k)
      if (seens[k].seen == 0)
        apart += (apart.empty() ? "" : ", ") + std::string("rank ") + std::to_string(k) + " (on " +
                 host_of(seens[k]) + ")";
    if (apart.empty())
      return {};
    not_rank0s_staging_ = seen.seen == 0;
    failed_alike_ = true;
    return Status(Errc::invalid_argument,
                  who_ + ": OUT is not on a filesystem every rank shares: " + apart +
                      " cannot see the staging directory rank 0 (on " + host_of(seens[0]) +
                      ") made, " + staging.string() +
                      "; each node would fill a directory of its own, and no rank could commit "
                      "the whole output. Give an OUT on a filesystem every node mounts (not "
                      "/tmp, /dev/shm or a disk of each node's own)");
  }

  bool owner_gone() const override { return not_rank0s_staging_; }
  bool failed_alike() const override { return failed_alike_; }

  // A failure elsewhere is learned at the end of this rank's share (end_share), not during it.
  const std::atomic<bool>* stop_flag() const override {
    static const std::atomic<bool> never{false};
    return options_.cancel ? options_.cancel : &never;
  }
  std::string stop_reason() const override { return "interrupted"; }

  Result<SharesEnded> end_share(const Status& own, const std::string& done) override {
    std::string text = own.ok() ? done : who_ + ": " + own.message();
    if (!own.ok() && text.size() > MAX_MESSAGE)
      text.resize(MAX_MESSAGE);
    const ShareRecord mine{own.ok() ? 1 : 0, static_cast<int32_t>(text.size())};
    // As long as the slowest rank's share: no timeout (a rank that dies is mpirun's to see).
    auto gathered = gather(mine, "every rank to end its share", false);
    if (!gathered)
      return gathered.status();
    const std::vector<ShareRecord>& all = *gathered;
    MPI_Request request;
    std::vector<int> counts(all.size()), offsets(all.size());
    int total = 0;
    for (size_t k = 0; k < all.size(); ++k) {
      counts[k] = all[k].bytes;
      offsets[k] = total;
      total += all[k].bytes;
    }
    std::string texts(static_cast<size_t>(total), '\0');
    if (Status s = check(MPI_Iallgatherv(text.data(), static_cast<int>(text.size()), MPI_CHAR,
                                         texts.data(), counts.data(), offsets.data(), MPI_CHAR,
                                         comm_, &request),
                         "MPI_Iallgatherv");
        !s.ok())
      return s;
    if (Status s = wait(request, "every rank's report", true); !s.ok())
      return s;
    SharesEnded ended;
    for (size_t k = 0; k < all.size(); ++k)
      (all[k].ok ? ended.done : ended.failures).push_back(texts.substr(offsets[k], counts[k]));
    failures_ = ended.failures;
    return rank_.rank == 0 ? ended : SharesEnded{};
  }

  void tell_outcome(const Status& outcome) override {
    std::string message = outcome.message().substr(0, MAX_MESSAGE);
    OutcomeRecord record{static_cast<int32_t>(outcome.code()),
                         static_cast<int32_t>(message.size())};
    broadcast(record, message).ignore(); // rank 0 reports its own outcome either way
  }

  Status learn_outcome(const Status& own) override {
    OutcomeRecord record{};
    std::string message;
    if (Status s = broadcast(record, message); !s.ok())
      return Status(s.code(), s.message() + "; OUT is whole if rank 0 committed before it heard, "
                                            "else absent (see rank 0's output)");
    if (record.code == 0)
      return own;
    if (!own.ok())
      return own;
    return Status(static_cast<Errc>(record.code),
                  failures_.empty() ? "the job failed: rank 0 could not commit: " + message
                                    : "the job failed: " + failures_.front());
  }

private:
  bool cancelled() const { return options_.cancel && options_.cancel->load(); }

  Status check(int rc, const char* what) const {
    if (rc == MPI_SUCCESS)
      return {};
    return Status(Errc::io, who_ + ": " + what + " failed: " + mpi_error(rc));
  }

  // MPI for this thread (MPI_THREAD_FUNNELED: the pipeline's threads never call it), unless the
  // program that embeds the library initialized it already; then our own communicator.
  Status init() {
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (finalized)
      return Status(Errc::unsupported, who_ + ": MPI was finalized earlier in this process; a " +
                                           "process takes part in one job of several ranks");
    if (!initialized) {
      int provided = 0;
      if (Status s = check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided),
                           "MPI_Init_thread");
          !s.ok())
        return s;
      we_initialized_ = true;
    }
    int provided = 0, main_thread = 0;
    MPI_Query_thread(&provided);
    MPI_Is_thread_main(&main_thread);
    if (provided < MPI_THREAD_FUNNELED || (provided < MPI_THREAD_SERIALIZED && !main_thread))
      return Status(Errc::unsupported,
                    who_ + ": MPI was initialized with a thread level that does not allow this "
                           "thread to call it");
    MPI_Request request;
    if (Status s = check(MPI_Comm_idup(MPI_COMM_WORLD, &comm_, &request), "MPI_Comm_idup"); !s.ok())
      return s;
    if (Status s = wait(request, "every rank to start", true); !s.ok())
      return s;
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    return {};
  }

  // Polls `request` until it completes. Gives up when the user interrupts or, if `timed`, after
  // --job-timeout; the collective then stays open (abandoned_: no MPI_Finalize).
  Status wait(MPI_Request& request, const std::string& what, bool timed) {
    const auto start = std::chrono::steady_clock::now();
    for (;; std::this_thread::sleep_for(POLL)) {
      int complete = 0;
      if (Status s = check(MPI_Test(&request, &complete, MPI_STATUS_IGNORE), "MPI_Test"); !s.ok())
        return abandon(s);
      if (complete)
        return {};
      if (cancelled())
        return abandon(Status(Errc::interrupted, who_ + ": interrupted while waiting for " + what));
      if (timed && std::chrono::steady_clock::now() - start > options_.job_timeout)
        return abandon(Status(Errc::io, who_ + ": waited " +
                                            std::to_string(options_.job_timeout.count()) +
                                            " s (--job-timeout) for " + what +
                                            "; a rank is stuck or gone (see its own output)"));
    }
  }

  // A collective left open: the ranks' collectives no longer pair up, so this rank starts none
  // again (a later one would be matched with the others' open one) and reports why it gave up.
  Status abandon(Status why) {
    abandoned_ = true;
    abandoned_why_ = why;
    return why;
  }

  // Every rank's `mine` (a record of plain bytes), in rank order, on every rank; `what` names the
  // wait, which --job-timeout bounds when `timed`.
  template <typename Record>
  Result<std::vector<Record>> gather(const Record& mine, const std::string& what, bool timed) {
    if (abandoned_)
      return abandoned_why_;
    int size = 0;
    MPI_Comm_size(comm_, &size);
    std::vector<Record> all(static_cast<size_t>(size));
    MPI_Request request;
    if (Status s = check(MPI_Iallgather(&mine, sizeof mine, MPI_BYTE, all.data(), sizeof mine,
                                        MPI_BYTE, comm_, &request),
                         "MPI_Iallgather");
        !s.ok())
      return s;
    if (Status s = wait(request, what, timed); !s.ok())
      return s;
    return all;
  }

  // Every rank's `text`, in rank order, on every rank.
  Result<std::vector<std::string>> gather_texts(const std::string& text) {
    if (abandoned_)
      return abandoned_why_;
    int size = 0;
    MPI_Comm_size(comm_, &size);
    const int32_t mine = static_cast<int32_t>(text.size());
    std::vector<int> counts(static_cast<size_t>(size)), offsets(static_cast<size_t>(size));
    MPI_Request request;
    if (Status s = check(
            MPI_Iallgather(&mine, 1, MPI_INT32_T, counts.data(), 1, MPI_INT32_T, comm_, &request),
            "MPI_Iallgather");
        !s.ok())
      return s;
    if (Status s = wait(request, "every rank's output directory", true); !s.ok())
      return s;
    int total = 0;
    for (size_t k = 0; k < counts.size(); ++k) {
      offsets[k] = total;
      total += counts[k];
    }
    std::string texts(static_cast<size_t>(total), '\0');
    if (Status s = check(MPI_Iallgatherv(text.data(), mine, MPI_CHAR, texts.data(), counts.data(),
                                         offsets.data(), MPI_CHAR, comm_, &request),
                         "MPI_Iallgatherv");
        !s.ok())
      return s;
    if (Status s = wait(request, "every rank's output directory", true); !s.ok())
      return s;
    std::vector<std::string> all;
    for (size_t k = 0; k < counts.size(); ++k)
      all.push_back(texts.substr(static_cast<size_t>(offsets[k]), static_cast<size_t>(counts[k])));
    return all;
  }

  static std::string host_of(const SeenRecord& r) {
    const std::string host(r.host, strnlen(r.host, sizeof r.host));
    return host.empty() ? "an unnamed host" : host;
  }

  // Rank 0's check file: its nonce, written and closed (a network filesystem shows a closed
  // file's bytes to the other nodes that open it after).
  Status write_check(const std::filesystem::path& path, std::string_view nonce) const {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
      return Status(Errc::io, who_ + ": " + path.string() + ": " + errno_text(errno));
    const bool whole =
        ::write(fd, nonce.data(), nonce.size()) == static_cast<ssize_t>(nonce.size());
    const int err = errno;
    ::close(fd);
    if (!whole) {
      ::unlink(path.c_str());
      return Status(Errc::io, who_ + ": " + path.string() + ": " + errno_text(err));
    }
    return {};
  }

  // What this rank reads at rank 0's check file: its nonce, or "" when it is not there.
  static std::string read_check(const std::filesystem::path& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
      return {};
    char text[64] = {};
    const ssize_t n = ::read(fd, text, sizeof text);
    ::close(fd);
    return n > 0 ? std::string(text, static_cast<size_t>(n)) : std::string();
  }

  // Rank 0 sends `record` and `message`; the other ranks receive them.
  Status broadcast(OutcomeRecord& record, std::string& message) {
    if (abandoned_)
      return abandoned_why_;
    MPI_Request request;
    if (Status s =
            check(MPI_Ibcast(&record, sizeof record, MPI_BYTE, 0, comm_, &request), "MPI_Ibcast");
        !s.ok())
      return s;
    if (Status s = wait(request, "rank 0's commit", true); !s.ok())
      return s;
    message.resize(static_cast<size_t>(record.bytes));
    if (record.bytes == 0)
      return {};
    if (Status s = check(MPI_Ibcast(message.data(), record.bytes, MPI_CHAR, 0, comm_, &request),
                         "MPI_Ibcast");
        !s.ok())
      return s;
    return wait(request, "rank 0's commit", true);
  }

  const ConvertOptions& options_;
  RankInfo rank_;
  std::string who_;
  MPI_Comm comm_ = MPI_COMM_NULL;
  bool we_initialized_ = false;
  bool abandoned_ = false; ///< a collective was left open: no MPI_Finalize, no more collectives
  Status abandoned_why_;   ///< why (abandon)
  bool not_rank0s_staging_ = false;   ///< begin: this rank's staging directory is not rank 0's
  bool failed_alike_ = false;         ///< begin: every rank found the same failure
  std::vector<std::string> failures_; ///< every failed rank's line, from end_share
};

} // namespace

bool coordinates_through_mpi(const RankInfo& rank) {
  return rank.launcher_is_mpi && rank.world > 1;
}

std::unique_ptr<Coordinator> make_mpi_coordinator(const ConvertOptions& options,
                                                  const RankInfo& rank) {
  return std::make_unique<MpiCoordinator>(options, rank);
}

#else // built without MPI: every job coordinates through marker files

bool coordinates_through_mpi(const RankInfo&) {
  return false;
}

std::unique_ptr<Coordinator> make_mpi_coordinator(const ConvertOptions&, const RankInfo&) {
  return nullptr;
}

#endif

} // namespace shardshift
