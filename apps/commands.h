// commands.h: the subcommands of the shardshift tool. Each parses its own flags (Boost
// program_options, laid out by cli.h), calls the library, draws progress on stderr and returns
// the exit code: 0 success, 1 failure, 2 usage error, 130 interrupted.
#pragma once

namespace shardshift::app {

int cmd_inspect(int argc, char** argv);
int cmd_synth(int argc, char** argv);
int cmd_plan(int argc, char** argv);
int cmd_convert(int argc, char** argv);
int cmd_verify(int argc, char** argv);

} // namespace shardshift::app
