// checkpoint_base.cpp: `--base DIR` (docs/semantics.md section 16). The original Hugging Face
// checkpoint is opened like any input and its shards are appended to the input's, so that the
// plan's sources, the engine's reads and releases, and the resume fingerprint cover both without
// a second code path. The planner (plan_base.cpp) decides which of its keys are copied back.
#include "shardshift/checkpoint.h"
#include "shardshift/plan.h"

#include "adapter.h"
#include "planner.h"

namespace shardshift {

namespace fs = std::filesystem;

Status Checkpoint::attach_base(const fs::path& base, uint64_t memory_limit) {
  if (base_first_shard)
    return Status(Errc::invalid_argument, base.string() + ": a base is already attached");
  // One file of IN, or the directory IN: either way the same files would be read twice, and
  // nothing could be restored that IN does not already hold.
  std::error_code ec;
  const fs::path base_dir = fs::is_directory(base, ec) ? base : base.parent_path();
  if (fs::equivalent(base, root, ec) || fs::equivalent(base_dir, root, ec))
    return Status(Errc::plan, base.string() + ": --base is the input checkpoint itself (" +
                                  root.string() +
                                  "); give the original Hugging Face checkpoint IN was made from");
  auto opened = Checkpoint::open(base, memory_limit);
  if (!opened)
    return Status(opened.status().code(),
                  "--base " + base.string() + ": not a checkpoint shardshift can read:\n" +
                      opened.status().message());
  Checkpoint& b = *opened;
  base_first_shard = static_cast<uint32_t>(shards.size());
  base_root = base;
  base_config_model_type = b.config_model_type;
  for (Shard& s : b.shards) {
    // The path names the shard in the plan's notes, in errors and in the resume fingerprint; a
    // bare name could be one of IN's.
    s.file_name = s.file->path();
    shards.push_back(std::move(s));
  }
  for (std::string& w : b.warnings)
    warnings.push_back("--base: " + w);
  return {};
}

Result<Checkpoint> open_for_plan(const fs::path& input, const PlanOptions& options,
                                 uint64_t memory_limit) {
  auto opened = Checkpoint::open(input, memory_limit);
  if (!opened || options.base.empty())
    return opened;
  // The direction first, so that --base on from_hf is a usage error whatever DIR holds.
  std::optional<Direction> direction = options.direction;
  if (!direction) {
    std::vector<std::string> keys;
    for (TensorRef r : data_order(*opened))
      keys.push_back(opened->info(r).name);
    auto spec = select_adapter(opened->config_model_type, keys, options.adapter, std::nullopt);
    if (!spec)
      return spec.status(); // make_plan would say the same
    direction = (*spec)->direction;
  }
  if (*direction != Direction::to_hf)
    return Status(Errc::invalid_argument,
                  "--base restores what from_hf dropped and applies to to_hf only; " +
                      input.string() + " is converted from_hf (Hugging Face to native)");
  if (Status s = opened->attach_base(options.base, memory_limit); !s.ok())
    return s;
  return opened;
}

} // namespace shardshift
