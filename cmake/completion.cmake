# completion.cmake: makes the bash completion script from the built binary, so that the commands,
# flags and model names it offers are the ones the tool has (they cannot drift).
# Run as: cmake -DSHARDSHIFT=path/to/shardshift -DTEMPLATE=completion/shardshift.bash.in
#               -DOUT=build/shardshift.bash -P completion.cmake
#
# Commands come from `shardshift --help` (the lines under "Commands:"), each command's flags from
# its --help (a flag line starts with "  -x, --name" or "      --name", then the value's
# placeholder if it takes one), model names from the "models:" line of `shardshift --version`.

function(run_shardshift out_var)
  execute_process(COMMAND ${SHARDSHIFT} ${ARGN} OUTPUT_VARIABLE out RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "completion: '${SHARDSHIFT} ${ARGN}' failed (${rc})")
  endif()
  set(${out_var} "${out}" PARENT_SCOPE)
endfunction()

# One list element per line (semicolons escaped first: they separate CMake list elements).
function(lines_of text out_var)
  string(REPLACE ";" "\\;" text "${text}")
  string(REPLACE "\n" ";" lines "${text}")
  set(${out_var} "${lines}" PARENT_SCOPE)
endfunction()

run_shardshift(top --help)
lines_of("${top}" top_lines)
set(commands "")
set(in_commands FALSE)
foreach(line IN LISTS top_lines)
  if(line STREQUAL "Commands:")
    set(in_commands TRUE)
  elseif(in_commands AND line MATCHES "^  ([a-z][a-z0-9-]*) ")
    list(APPEND commands ${CMAKE_MATCH_1})
  elseif(in_commands AND line STREQUAL "")
    set(in_commands FALSE)
  endif()
endforeach()
if(NOT commands)
  message(FATAL_ERROR "completion: no commands found in '${SHARDSHIFT} --help'")
endif()

run_shardshift(version --version)
if(NOT version MATCHES "\nmodels: ([^\n]*)")
  message(FATAL_ERROR "completion: no 'models:' line in '${SHARDSHIFT} --version'")
endif()
set(SHARDSHIFT_MODELS "${CMAKE_MATCH_1}")

# For each command: its flags ("--json -q --quiet ...") and the value each value flag takes
# ("--model=MODEL --layers=N ..."). A placeholder may be "N", which if() reads as false: compare.
set(cases "")
foreach(command IN LISTS commands)
  run_shardshift(help ${command} --help)
  lines_of("${help}" help_lines)
  set(flags "")
  set(values "")
  foreach(line IN LISTS help_lines)
    if(line MATCHES "^  (-[a-zA-Z]), (--[a-z0-9-]+)( ([A-Z]+))?")
      list(APPEND flags ${CMAKE_MATCH_1} ${CMAKE_MATCH_2})
      if(NOT CMAKE_MATCH_4 STREQUAL "")
        list(APPEND values "${CMAKE_MATCH_1}=${CMAKE_MATCH_4}" "${CMAKE_MATCH_2}=${CMAKE_MATCH_4}")
      endif()
    elseif(line MATCHES "^      (--[a-z0-9-]+)( ([A-Z]+))?")
      list(APPEND flags ${CMAKE_MATCH_1})
      if(NOT CMAKE_MATCH_3 STREQUAL "")
        list(APPEND values "${CMAKE_MATCH_1}=${CMAKE_MATCH_3}")
      endif()
    endif()
  endforeach()
  list(JOIN flags " " flags)
  list(JOIN values " " values)
  string(APPEND cases "    ${command}) flags=\"${flags}\" values=\"${values}\" ;;\n")
endforeach()

list(JOIN commands " " SHARDSHIFT_COMMANDS)
set(SHARDSHIFT_COMMAND_CASES "${cases}")
configure_file(${TEMPLATE} ${OUT} @ONLY)
