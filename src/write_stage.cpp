// write_stage.cpp: opening, filling and finishing output files, one item at a time.
#include "write_stage.h"

namespace shardshift {

Status WriteStage::write(const Item& item) {
  Status s;
  switch (item.kind) {
  case ItemKind::open_file:
    s = open_file(item);
    break;
  case ItemKind::copy_run:
    s = copy_run(item);
    break;
  case ItemKind::transform:
  case ItemKind::ones:
    s = append_chunk(item);
    break;
  case ItemKind::close_file:
    s = close_file(item);
    break;
  }
  return s;
}

void WriteStage::abandon() {
  if (writer_ && open_file_)
    target_.abandon(*writer_, *open_file_);
  writer_.reset();
  open_file_ = nullptr;
}

Status WriteStage::open_file(const Item& item) {
  const OutputFile& file = plan_.files[item.file];
  writer_ = std::make_unique<ShardWriter>(io_);
  writer_->set_cancel(cancel_);
  open_file_ = &file;
  totals_.done += file.header.size();
  const uint64_t t0 = profiler_.now();
  Status s = target_.open(*writer_, file);
  profiler_.record(Stage::open, t0, profiler_.now(), file.size(), file.name);
  return s;
}

Status WriteStage::copy_run(const Item& item) {
  const uint64_t t0 = profiler_.now();
  const MappedFile& in = *item.shard->file;
  auto view = in.view(item.in_offset, item.length);
  if (!view)
    return view.status();
  // Filesystems share extents (reflink) only for whole blocks at block-aligned offsets on both
  // sides. When the plan kept this run's offset modulo 4096 (planner: reflink_alignment), copy
  // the unaligned head and tail separately so the aligned middle can be shared instead of copied.
  uint64_t head = 0, body = item.length;
  const uint64_t out_pos = writer_->bytes_written();
  if (item.in_offset % 4096 == out_pos % 4096 && item.length > 2 * 4096) {
    head = (4096 - item.in_offset % 4096) % 4096;
    body = (item.length - head) & ~uint64_t{4095};
  }
  const uint64_t pieces[3][2] = {{0, head}, {head, body}, {head + body, item.length - head - body}};
  bool zero_copy = false;
  Status copied;
  Status guard = guard_mapped_access(in, [&] {
    for (auto& [off, len] : pieces)
      if (len != 0 && copied.ok())
        copied = writer_->append_copy(in.fd(), item.in_offset + off, len, view->subspan(off, len),
                                      &zero_copy, in.path());
  });
  (zero_copy ? totals_.zero_copy_bytes : totals_.fallback_copy_bytes) += item.length;
  totals_.done += item.length;
  profiler_.record(Stage::write_copy, t0, profiler_.now(), item.length, item.tensor->name);
  return guard.ok() ? copied : guard;
}

Status WriteStage::append_chunk(const Item& item) {
  const uint64_t t0 = profiler_.now();
  Status s = writer_->append({item.buffer, item.length});
  if (item.kind == ItemKind::ones)
    totals_.ones_bytes += item.length;
  totals_.done += item.length;
  profiler_.record(Stage::write_data, t0, profiler_.now(), item.length, item.tensor->name);
  return s;
}

Status WriteStage::close_file(const Item& item) {
  const OutputFile& file = plan_.files[item.file];
  const uint64_t t0 = profiler_.now();
  Status s = target_.finish(*writer_, file);
  if (!s.ok()) {
    abandon();
    return s;
  }
  writer_.reset();
  open_file_ = nullptr;
  totals_.output_bytes += file.size();
  profiler_.record(Stage::commit, t0, profiler_.now(), file.size(), file.name);
  return s;
}

} // namespace shardshift
