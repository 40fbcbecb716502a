// discard.h: removing what a stopped run wrote without making its user wait for the disk.
//
// Removing a file costs the filesystem in proportion to what was written into it: its extents
// are freed and, on a disk mounted with `discard`, trimmed, which took 0.6 s for a 3 GB shard
// on the test VM (docs/PERFORMANCE.md, "Stopping"). A run that stops after Ctrl-C must leave
// nothing behind, but nothing obliges it to wait for that. So a large file is discarded in two
// steps: its name is removed at once (the unlink is quick while the file is still open, since
// the blocks stay referenced), and the open file goes to a detached process that closes it,
// which is when the filesystem frees the blocks, while this process goes on or exits. Where no
// such process can be started, the file is closed here, exactly what a plain unlink would have
// cost. Either way no name is left behind, and the space comes back within moments.
//
// Thread-safety: discard_file() and discard_open_file() may be called from any thread (the
// files held are kept in one locked list); release_discarded() from any thread, at any time.
#pragma once

#include "shardshift/io.h"

#include <cstdint>
#include <filesystem>

namespace shardshift {

/// Files with less than this on disk are unlinked plainly: freeing them is quick.
inline constexpr uint64_t DISCARD_MIN_BYTES = uint64_t{64} << 20;

/// Removes the name `path` through `io` (0, or -1 with errno, as unlink(2)). A regular file with
/// DISCARD_MIN_BYTES or more on disk, on a local or cluster filesystem that removes open files
/// without a trace (ext4, XFS, btrfs, tmpfs, F2FS, ZFS, Lustre, GPFS; not NFS, SMB or FUSE, which
/// keep a hidden name until the last close), is kept open until release_discarded(), so its space
/// is freed by the detached process; anything else is unlinked plainly. Never follows a symlink.
int discard_file(Io& io, const std::filesystem::path& path);

/// The same for a file this process has open: removes `path`, then keeps `fd` (which it now
/// owns) until release_discarded(), or closes it first where the filesystem is not one of those.
/// When the unlink fails, `fd` is closed through `io` and -1 is returned with errno.
int discard_open_file(Io& io, int fd, const std::filesystem::path& path);

/// Hands every file held by the calls above to a detached process, which closes them and exits
/// (nobody waits for it, and it keeps no other file of this process open: not stdout, not a
/// pipe), then closes this process's descriptors. Returns at once when nothing is held. When
/// the process cannot be started, or this process holds more than 4 GiB of private memory (a
/// host with a large heap, whose page tables a fork would copy), the files are closed here.
void release_discarded();

} // namespace shardshift
