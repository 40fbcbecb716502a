// plan_flags.h: the flags that shape a conversion's output (--adapter, --direction,
// --max-shard-size, --dtype, --exclude, the expert-parallel flags, ...). `plan`, `convert` and
// `verify` take the same ones with the same defaults, so that a plan shows what a conversion
// writes and a verification recomputes what it wrote.
// Thread-safety: plain functions over values.
#pragma once

#include "shardshift/plan.h"
#include "shardshift/status.h"

#include "cli.h"

#include <boost/program_options.hpp>

namespace shardshift::app {

/// The group "What to write", with every flag that shapes the output and its default.
FlagGroup output_flags();

/// PlanOptions from those flags; a bad value is Errc::invalid_argument (a usage error).
Result<PlanOptions> plan_options(const boost::program_options::variables_map& vm);

} // namespace shardshift::app
