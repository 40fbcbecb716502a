// plan_quantize.cpp: the planning side of to_hf --quantize fp8 (docs/semantics.md 15.7). Every
// output weight the adapter names (a key ending in `.weight` outside its `not_quantized` list)
// becomes two outputs of the same source: `W` in F8_E4M3 (OpKind::quantize) and `W_scale_inv`, its
// F32 128 x 128 block scales (OpKind::quantize_scale). The source is whatever the weight would
// otherwise have been made of: a pass-through 2-D tensor, or one expert's column block of a
// stacked tensor, transposed (14.3); the emitter and the kernel read either through strides.
#include "planner.h"
#include "quantize.h"

namespace shardshift {

bool quantized_output(const PlanContext& ctx, std::string_view name) {
  if (!ctx.options.quantize_fp8 || !name.ends_with(".weight"))
    return false;
  for (std::string_view keep : ctx.spec.not_quantized)
    if (name.find(keep) != std::string_view::npos)
      return false;
  return true;
}

void emit_quantized(PlanContext& ctx, OutputTensor t) {
  const TensorInfo& src = ctx.input.info(t.source);
  if (t.shape.size() != 2) {
    ctx.problems.add(Errc::plan, "", src.name,
                     "--quantize fp8: '" + printable(t.name) + "' has shape " +
                         shape_text(t.shape) + "; 128 x 128 block scales need a 2-D weight");
    return;
  }
  if (Status s = check_quantize_supported(src.dtype); !s.ok()) {
    ctx.problems.add(Errc::plan, "", src.name, "--quantize fp8: " + s.message());
    return;
  }
  OutputTensor scale = t;
  t.op = OpKind::quantize;
  t.dtype = DType::F8_E4M3;
  t.note = "quantize to F8_E4M3, " + (t.note.empty() ? "from " + src.name : t.note);
  // The reference removes excluded keys before it quantizes: an excluded weight takes its
  // scale with it, and the scale's own name is never matched.
  const std::string name = t.name;
  if (!emit_tensor(ctx, std::move(t)))
    return;
  scale.name = name + "_scale_inv";
  scale.op = OpKind::quantize_scale;
  scale.dtype = DType::F32;
  scale.shape = {scale_blocks(scale.shape[0]), scale_blocks(scale.shape[1])};
  scale.size = tensor_byte_size(scale.dtype, scale.shape).value_or(0);
  scale.note = "128 x 128 block scales of " + name;
  ctx.plan.tensors.push_back(std::move(scale));
}

} // namespace shardshift
