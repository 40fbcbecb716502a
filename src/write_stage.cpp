// write_stage.cpp: opening, filling and finishing output files, one item at a time, or for a
// mapped file, item by item on any thread.
#include "write_stage.h"

namespace shardshift {

Status WriteStage::write(Item& item) {
  if (item.fill) {
    if (item.kind == ItemKind::open_file)
      return open_filled(item);
    if (item.kind == ItemKind::close_file)
      return {}; // its count is given back after it, with the items' (fill)
    return claim(item);
  }
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
  // A filled file left unfinished by a failed run goes with its last holder (~ShardWriter).
}

// The check runs as each file is made final: where files are committed one by one (--pipe-to),
// the run's own check at its end would come after some were delivered. Every shard is asked, a
// stat each: the file's own sources are spread over its items.
std::unique_ptr<ShardWriter> WriteStage::new_writer() const {
  auto writer = std::make_unique<ShardWriter>(io_);
  writer->set_cancel(cancel_);
  writer->set_final_check([&input = input_] { return input.unchanged(); });
  return writer;
}

Status WriteStage::open_filled(Item& item) {
  FillingFile& f = *item.fill;
  auto writer = new_writer();
  totals_.done += f.file->header.size();
  const uint64_t t0 = profiler_.now();
  Status s = target_.open(*writer, *f.file);
  profiler_.record(Stage::open, t0, profiler_.now(), f.file->size(), f.file->name);
  f.writer = std::move(writer);
  if (s.ok())
    f.opened.store(true, std::memory_order_release);
  else
    f.failed = true;
  return s;
}

Status WriteStage::claim(Item& item) {
  FillingFile& f = *item.fill;
  if (!f.writer)
    return Status(Errc::io, f.file->name + ": internal: an item reached a file not opened");
  if (Status s = f.writer->claim(item.fill_offset, item.length); !s.ok())
    return s;
  if (item.kind == ItemKind::copy_run)
    totals_.fallback_copy_bytes += item.length; // copied through memory, not by the kernel
  if (item.kind == ItemKind::ones)
    totals_.ones_bytes += item.length;
  totals_.done += item.length;
  return {};
}

Status WriteStage::fill(Item& item, bool skip) {
  if (!item.fill)
    return {};
  const std::shared_ptr<FillingFile> f = std::move(item.fill);
  if (item.kind == ItemKind::open_file) // nothing counted for it
    return {};
  if (skip)
    f->failed = true;
  if (item.kind == ItemKind::close_file)
    return release(f);
  Status s;
  if (!f->failed.load()) {
    const uint64_t t0 = profiler_.now();
    if (item.kind == ItemKind::copy_run) {
      const MappedFile& in = *item.shard->file;
      auto view = in.view(item.in_offset, item.length);
      if (!view) {
        s = view.status();
      } else {
        in.populate(item.in_offset, item.length); // one call rather than a fault per page
        s = f->writer->fill(item.fill_offset, *view, &in.path());
      }
    } else {
      s = f->writer->fill(item.fill_offset, {item.buffer, item.length});
    }
    profiler_.record(item.kind == ItemKind::copy_run ? Stage::write_copy : Stage::write_data, t0,
                     profiler_.now(), item.length, item.tensor->name);
    if (!s.ok())
      f->failed = true;
  }
  Status finished = release(f);
  return s.ok() ? finished : s;
}

Status WriteStage::release(const std::shared_ptr<FillingFile>& f) {
  if (f->pending.fetch_sub(1, std::memory_order_acq_rel) != 1)
    return {};
  if (!f->writer) // never opened: the run failed first
    return {};
  if (f->failed.load()) {
    target_.abandon(*f->writer, *f->file);
    return {};
  }
  const uint64_t t0 = profiler_.now();
  Status s = target_.finish(*f->writer, *f->file);
  if (!s.ok()) {
    target_.abandon(*f->writer, *f->file);
    return s;
  }
  filled_output_bytes_ += f->file->size();
  profiler_.record(Stage::commit, t0, profiler_.now(), f->file->size(), f->file->name);
  return s;
}

Status WriteStage::open_file(const Item& item) {
  const OutputFile& file = plan_.files[item.file];
  writer_ = new_writer();
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
