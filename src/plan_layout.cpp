// plan_layout.cpp: the passes that lay the output out once its tensors are known: cut them into
// files like Hugging Face does, order each file (copies first), assign offsets, build each file's
// exact header, and add up the totals the index and the summary report.
#include "shardshift/shard_writer.h"

#include "planner.h"

#include <algorithm>

namespace shardshift {

void cut_files(PlanContext& ctx) {
  const std::vector<OutputTensor>& out = ctx.plan.tensors;
  std::vector<uint64_t> sizes;
  sizes.reserve(out.size());
  for (const OutputTensor& t : out)
    sizes.push_back(t.size);
  ctx.file_tensors = cut_shards(sizes, ctx.options.max_shard_size);
  // Copies first (they need no buffer and may share extents), then everything else; each group
  // keeps input order.
  for (std::vector<uint32_t>& file : ctx.file_tensors)
    std::stable_partition(file.begin(), file.end(),
                          [&](uint32_t i) { return out[i].op == OpKind::copy; });
}

std::optional<uint64_t> reflink_alignment(const Checkpoint& input,
                                          const std::vector<OutputTensor>& all,
                                          const std::vector<uint32_t>& tensors) {
  // The longest run of copies that lie back to back in one input shard (copies come first).
  uint64_t best_len = 0, best_in = 0, best_out = 0;
  for (size_t k = 0; k < tensors.size();) {
    const OutputTensor& first = all[tensors[k]];
    if (first.op != OpKind::copy)
      break;
    uint64_t run_len = first.size;
    uint64_t in_end = input.file_offset(first.source) + first.size;
    size_t j = k + 1;
    for (; j < tensors.size(); ++j) {
      const OutputTensor& t = all[tensors[j]];
      if (t.op != OpKind::copy || t.source.shard != first.source.shard ||
          input.file_offset(t.source) != in_end)
        break;
      run_len += t.size;
      in_end += t.size;
    }
    if (run_len > best_len) {
      best_len = run_len;
      best_in = input.file_offset(first.source);
      best_out = first.offset;
    }
    k = j;
  }
  // Only when that keeps the data section 8-byte aligned, as the reference writer does.
  const uint64_t mod = (best_in - best_out) % 4096;
  if (best_len >= 4096 && mod % 8 == 0)
    return mod;
  return std::nullopt;
}

Status lay_out_headers(PlanContext& ctx) {
  std::vector<OutputTensor>& out = ctx.plan.tensors;
  const size_t count = ctx.file_tensors.size();
  for (size_t f = 0; f < count; ++f) {
    OutputFile file;
    file.name = shard_file_name(f, count);
    file.tensors = std::move(ctx.file_tensors[f]);
    std::vector<PlannedTensor> planned;
    for (uint32_t i : file.tensors) {
      out[i].file = static_cast<uint32_t>(f);
      out[i].offset = file.data_size;
      file.data_size += out[i].size;
      planned.push_back({out[i].name, out[i].dtype, out[i].shape});
    }
    HeaderOptions ho;
    if (ctx.options.align_for_reflink)
      ho.data_start_mod_4096 = reflink_alignment(ctx.input, out, file.tensors);
    auto header = build_header(planned, ho);
    if (!header) // e.g. a header over the format's limit: many small tensors in one file
      return Status(header.status().code(),
                    "output file " + file.name + " (" + std::to_string(file.tensors.size()) +
                        " tensors): " + header.status().message() +
                        "; a smaller --max-shard-size spreads the tensors over more files");
    file.header = std::move(header.value());
    ctx.plan.files.push_back(std::move(file));
  }
  ctx.file_tensors.clear();
  return {};
}

void summarize(PlanContext& ctx) {
  Plan& plan = ctx.plan;
  plan.adapter = std::string(ctx.spec.model);
  plan.direction = ctx.spec.direction;
  for (const OutputTensor& t : plan.tensors) {
    plan.total_tensor_bytes += t.size;
    plan.weight_map[t.name] = plan.files[t.file].name;
    (t.op == OpKind::copy   ? plan.copy_bytes
     : t.op == OpKind::ones ? plan.ones_bytes
                            : plan.transform_bytes) += t.size;
  }
  plan.write_index = plan.files.size() > 1;
  if (ctx.options.copy_side_files)
    plan.side_files = ctx.input.other_files;
}

} // namespace shardshift
