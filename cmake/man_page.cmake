# man_page.cmake: makes shardshift.1 (and shardshift.1.gz) with help2man from the built binary.
# Run as: cmake -DSHARDSHIFT=path/to/shardshift -DHELP2MAN=help2man -DVERSION=0.1.0
#               -DOUT=build/shardshift.1 -P man_page.cmake
#
# help2man reads `shardshift --help` for NAME, SYNOPSIS and DESCRIPTION; the subcommands' own
# --help goes into a COMMANDS section through help2man's --include file, verbatim (.nf), so the
# page says exactly what the tool says.

set(commands convert plan verify inspect synth)
set(include_file "${OUT}.h2m")
file(WRITE ${include_file} "[COMMANDS]\n")
foreach(command IN LISTS commands)
  execute_process(COMMAND ${SHARDSHIFT} ${command} --help OUTPUT_VARIABLE help
                  RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "man page: '${SHARDSHIFT} ${command} --help' failed (${rc})")
  endif()
  # roff: a backslash is \e; a line starting with . or ' would be a request.
  string(REPLACE "\\" "\\e" help "${help}")
  string(REGEX REPLACE "(^|\n)([.'])" "\\1\\\\&\\2" help "${help}")
  file(APPEND ${include_file} ".SS \"shardshift ${command}\"\n.nf\n${help}.fi\n")
endforeach()
# The top-level --help's examples, one per line: help2man would join them into one paragraph.
execute_process(COMMAND ${SHARDSHIFT} --help OUTPUT_VARIABLE top_help RESULT_VARIABLE rc)
if(NOT rc EQUAL 0 OR NOT top_help MATCHES "\nExamples:\n(.*)$")
  message(FATAL_ERROR "man page: '${SHARDSHIFT} --help' failed (${rc}) or has no Examples")
endif()
string(REGEX REPLACE "(^|\n)  " "\\1" examples "${CMAKE_MATCH_1}")
string(REPLACE "\\" "\\e" examples "${examples}")
file(APPEND ${include_file} "[=EXAMPLES]\n.nf\n${examples}.fi\n")
file(APPEND ${include_file} "[ENVIRONMENT]
.TP
.B SHARDSHIFT_SIMD
Caps the CPU kernels at \\fBportable\\fR, \\fBavx2\\fR or \\fBavx512\\fR (the best the CPU runs is
used otherwise).
[SEE ALSO]
.B shardshift --version
prints the version, the git revision and the features of this build.
")

execute_process(
  COMMAND ${HELP2MAN} --no-info --version-string=${VERSION}
          "--name=convert Mixture-of-Experts safetensors checkpoints between Hugging Face and NeMo"
          --section=1 --include=${include_file} --output=${OUT} ${SHARDSHIFT}
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "man page: help2man failed (${rc})")
endif()
# Debian installs man pages compressed; -n leaves the name and time out, so builds are identical.
execute_process(COMMAND gzip -9 -n -c ${OUT} OUTPUT_FILE ${OUT}.gz RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "man page: gzip failed (${rc})")
endif()
