// reflink_test.cpp: pass-through tensors share the input's extents on a filesystem that can
// (XFS with reflink=1, loop-mounted here). Needs root and loop devices: skips cleanly without.
#include "shardshift/convert.h"
#include "shardshift/synth.h"

#include "test_support.h"

#include <fcntl.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

// Bytes of `path` in extents the filesystem reports as shared (FIEMAP_EXTENT_SHARED).
uint64_t shared_bytes(const fs::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0)
    return 0;
  const unsigned n = 512;
  std::vector<char> buf(sizeof(fiemap) + n * sizeof(fiemap_extent));
  auto* fm = reinterpret_cast<fiemap*>(buf.data());
  uint64_t shared = 0, start = 0;
  for (;;) {
    std::fill(buf.begin(), buf.end(), 0);
    fm->fm_start = start;
    fm->fm_length = FIEMAP_MAX_OFFSET;
    fm->fm_flags = FIEMAP_FLAG_SYNC;
    fm->fm_extent_count = n;
    if (ioctl(fd, FS_IOC_FIEMAP, fm) != 0 || fm->fm_mapped_extents == 0)
      break;
    bool last = false;
    for (unsigned i = 0; i < fm->fm_mapped_extents; ++i) {
      const fiemap_extent& e = fm->fm_extents[i];
      if (e.fe_flags & FIEMAP_EXTENT_SHARED)
        shared += e.fe_length;
      start = e.fe_logical + e.fe_length;
      last |= (e.fe_flags & FIEMAP_EXTENT_LAST) != 0;
    }
    if (last)
      break;
  }
  ::close(fd);
  return shared;
}

uint64_t used_bytes(const fs::path& dir) {
  ::sync();
  struct statvfs s {};
  statvfs(dir.c_str(), &s);
  return (s.f_blocks - s.f_bfree) * s.f_frsize;
}

class XfsMount {
public:
  XfsMount() {
    if (geteuid() != 0) {
      why_ = "needs root to loop-mount a filesystem";
      return;
    }
    auto img = tmp_ / "xfs.img";
    auto r = testing::run_shell("truncate -s 400M " + img.string() +
                                " && mkfs.xfs -q -m reflink=1 " + img.string());
    if (r.exit_code != 0) {
      why_ = "mkfs.xfs unavailable: " + r.err;
      return;
    }
    fs::create_directories(mnt());
    r = testing::run_shell("mount -o loop " + img.string() + " " + mnt().string());
    if (r.exit_code != 0) {
      why_ = "cannot loop-mount here: " + r.err;
      return;
    }
    mounted_ = true;
  }
  ~XfsMount() {
    if (mounted_)
      (void)testing::run_shell("umount " + mnt().string());
  }
  fs::path mnt() const { return tmp_ / "mnt"; }
  bool mounted() const { return mounted_; }
  const std::string& why() const { return why_; }

private:
  TempDir tmp_;
  bool mounted_ = false;
  std::string why_;
};

TEST(Reflink, PassThroughSharesExtentsAndCostsNoDataBlocks) {
  XfsMount xfs;
  if (!xfs.mounted())
    GTEST_SKIP() << xfs.why();
  SynthOptions so;
  so.out = xfs.mnt() / "hf";
  so.layers = 2;
  so.scale_hidden = so.scale_intermediate = so.scale_vocab = 8;
  so.scale_experts = 16;
  ASSERT_TRUE(synth(so, Io::system(), {}).ok());

  const uint64_t before = used_bytes(xfs.mnt());
  ConvertOptions o;
  o.input = so.out;
  o.output = xfs.mnt() / "native";
  o.device = "cpu";
  auto r = convert(o);
  ASSERT_TRUE(r.ok()) << r.status().message();
  const uint64_t after = used_bytes(xfs.mnt());
  ASSERT_EQ(r->files, 1u);
  const fs::path out = o.output / "model.safetensors";
  const uint64_t shared = shared_bytes(out);
  std::cout << "pass-through " << r->zero_copy_bytes << " bytes, shared extents " << shared
            << " bytes, new blocks " << (after - before) << " bytes for a " << fs::file_size(out)
            << "-byte file\n";
  // The embedding (and its tied copy) dominate the pass-through bytes; all but a page at each end
  // of the aligned run must be shared, and only the transformed bytes may cost new blocks.
  EXPECT_GT(r->zero_copy_bytes, r->transformed_bytes);
  EXPECT_GE(shared + 4 * 4096 * 8, r->zero_copy_bytes / 2)
      << "too little of the pass-through is shared";
  EXPECT_LT(after - before, r->transformed_bytes + fs::file_size(out) / 4)
      << "the output cost as many blocks as a plain copy";
  // Without alignment nothing can be shared: the control case proves the measurement can fail.
  o.output = xfs.mnt() / "native-unaligned";
  o.plan.align_for_reflink = false;
  ASSERT_TRUE(convert(o).ok());
  EXPECT_LT(shared_bytes(o.output / "model.safetensors"), shared);
}

} // namespace
} // namespace shardshift
