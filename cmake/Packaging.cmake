# Packaging.cmake: shardshift installed like the Debian tools and C++ libraries it sits beside.
# Included by the top-level CMakeLists.txt once the targets exist.
#
#   build_info()   include/shardshift/version.h, from generated/version_config.h (the version of
#                  project(VERSION), the one place it is set, and the CUDA architectures of the
#                  library) and generated/git_revision.h (the git revision, read again before
#                  every build; "unknown" outside a git checkout).
#   shardshift.1   the man page, made by help2man from the built binary's --help plus a COMMANDS
#                  section holding each command's own --help (cmake/man_page.cmake); skipped with
#                  a note when help2man is missing (apt install help2man).
#   shardshift.bash  bash completion; its commands, flags and model names are read from the built
#                  binary (each command's --help, --version's "models:") so they cannot drift
#                  (cmake/completion.cmake, completion/shardshift.bash.in).
#   install        GNUInstallDirs paths in two components: Runtime (bin/shardshift, the man page,
#                  the completion) and Development (include/shardshift/*.h, libshardshift.a, the
#                  CMake package shardshift::shardshift, shardshift.pc).
#   cpack -G DEB   shardshift_VERSION_ARCH.deb (Runtime; Depends computed by dpkg-shlibdeps) and
#                  shardshift-dev_VERSION_ARCH.deb (Development; Depends on the -dev packages of
#                  what the static library links). scripts/package.sh builds and checks both.

# --- Version ------------------------------------------------------------------------------------
# The git revision is read before every build (cmake/git_revision.cmake), not only at configure
# time: a build directory configured once and rebuilt after commits still names its commit.
find_package(Git QUIET)
set(SHARDSHIFT_REVISION_HEADER ${PROJECT_BINARY_DIR}/generated/git_revision.h)
set(SHARDSHIFT_REVISION_COMMAND
    ${CMAKE_COMMAND} -DGIT=${GIT_EXECUTABLE} -DSOURCE_DIR=${PROJECT_SOURCE_DIR}
    -DOUT=${SHARDSHIFT_REVISION_HEADER} -P ${PROJECT_SOURCE_DIR}/cmake/git_revision.cmake)
execute_process(COMMAND ${SHARDSHIFT_REVISION_COMMAND}) # so the header exists after configuring
add_custom_target(shardshift_revision COMMAND ${SHARDSHIFT_REVISION_COMMAND}
                  BYPRODUCTS ${SHARDSHIFT_REVISION_HEADER}
                  COMMENT "Reading the git revision" VERBATIM)
add_dependencies(shardshift_lib shardshift_revision)
# The architectures the CUDA stage was compiled for, read back from the target (the truth).
set(SHARDSHIFT_CUDA_ARCHITECTURES_BUILT "")
if(SHARDSHIFT_HAVE_CUDA)
  get_target_property(SHARDSHIFT_CUDA_ARCHITECTURES_BUILT shardshift_lib CUDA_ARCHITECTURES)
  string(REPLACE ";" " " SHARDSHIFT_CUDA_ARCHITECTURES_BUILT "${SHARDSHIFT_CUDA_ARCHITECTURES_BUILT}")
endif()
configure_file(${PROJECT_SOURCE_DIR}/cmake/version_config.h.in
               ${PROJECT_BINARY_DIR}/generated/version_config.h @ONLY)
file(READ ${SHARDSHIFT_REVISION_HEADER} revision_header)
string(REGEX MATCH "REVISION \"([^\"]*)\"" revision_define "${revision_header}")
message(STATUS "shardshift: version ${PROJECT_VERSION}, revision ${CMAKE_MATCH_1}")

# --- Man page -----------------------------------------------------------------------------------
find_program(SHARDSHIFT_HELP2MAN help2man)
set(SHARDSHIFT_MAN_PAGE ${PROJECT_BINARY_DIR}/shardshift.1)
if(SHARDSHIFT_HELP2MAN)
  add_custom_command(
    OUTPUT ${SHARDSHIFT_MAN_PAGE} ${SHARDSHIFT_MAN_PAGE}.gz
    COMMAND ${CMAKE_COMMAND} -DSHARDSHIFT=$<TARGET_FILE:shardshift> -DHELP2MAN=${SHARDSHIFT_HELP2MAN}
            -DVERSION=${PROJECT_VERSION} -DOUT=${SHARDSHIFT_MAN_PAGE}
            -P ${PROJECT_SOURCE_DIR}/cmake/man_page.cmake
    DEPENDS shardshift ${PROJECT_SOURCE_DIR}/cmake/man_page.cmake
    COMMENT "Generating the man page shardshift.1 with help2man" VERBATIM)
  add_custom_target(shardshift_man ALL DEPENDS ${SHARDSHIFT_MAN_PAGE}.gz)
  install(FILES ${SHARDSHIFT_MAN_PAGE}.gz DESTINATION ${CMAKE_INSTALL_MANDIR}/man1
          COMPONENT Runtime)
else()
  message(STATUS "shardshift: help2man not found: no man page (apt install help2man)")
endif()

# --- Bash completion ----------------------------------------------------------------------------
set(SHARDSHIFT_COMPLETION ${PROJECT_BINARY_DIR}/shardshift.bash)
add_custom_command(
  OUTPUT ${SHARDSHIFT_COMPLETION}
  COMMAND ${CMAKE_COMMAND} -DSHARDSHIFT=$<TARGET_FILE:shardshift>
          -DTEMPLATE=${PROJECT_SOURCE_DIR}/completion/shardshift.bash.in
          -DOUT=${SHARDSHIFT_COMPLETION} -P ${PROJECT_SOURCE_DIR}/cmake/completion.cmake
  DEPENDS shardshift ${PROJECT_SOURCE_DIR}/cmake/completion.cmake
          ${PROJECT_SOURCE_DIR}/completion/shardshift.bash.in
  COMMENT "Generating bash completion shardshift.bash from the commands' --help" VERBATIM)
add_custom_target(shardshift_completion ALL DEPENDS ${SHARDSHIFT_COMPLETION})
install(FILES ${SHARDSHIFT_COMPLETION} DESTINATION ${CMAKE_INSTALL_DATADIR}/bash-completion/completions
        RENAME shardshift COMPONENT Runtime)

# --- Install ------------------------------------------------------------------------------------
install(TARGETS shardshift RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT Runtime)
install(TARGETS shardshift_lib EXPORT shardshiftTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT Development)
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/shardshift
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} COMPONENT Development FILES_MATCHING PATTERN "*.h")

# The library is static, so a program linking it links everything it links, PRIVATE or not:
# shardshiftConfig.cmake must find each of those, and shardshift-dev must depend on each one's
# Debian -dev package, and shardshift.pc must name each. The lists are made here from the target's own link libraries, so a
# dependency added to the library cannot be forgotten: one this table does not know stops the
# configuration.
set(SHARDSHIFT_FIND_DEPENDENCIES "")
set(SHARDSHIFT_DEV_DEPENDS "")
set(SHARDSHIFT_PC_REQUIRES "")
set(SHARDSHIFT_PC_LIBS "")
get_target_property(shardshift_links shardshift_lib LINK_LIBRARIES)
foreach(link IN LISTS shardshift_links)
  if(link MATCHES "^simdjson::")
    set(find "find_dependency(simdjson)")
    set(deb libsimdjson-dev)
    set(pc simdjson)
  elseif(link MATCHES "^TBB::")
    set(find "find_dependency(TBB)")
    set(deb libtbb-dev)
    set(pc tbb)
  elseif(link MATCHES "^Threads::")
    set(find "find_dependency(Threads)")
    set(deb "")
    set(pc -pthread)
  elseif(link MATCHES "^Boost::(.*)")
    set(find "find_dependency(Boost ${Boost_VERSION_MAJOR}.${Boost_VERSION_MINOR} COMPONENTS ${CMAKE_MATCH_1})")
    string(REPLACE "_" "-" component ${CMAKE_MATCH_1})
    set(deb libboost-${component}-dev)
    set(pc -lboost_${CMAKE_MATCH_1})
  elseif(link MATCHES "^OpenSSL::(Crypto|SSL)$")
    set(find "find_dependency(OpenSSL)")
    set(deb libssl-dev)
    string(TOLOWER "lib${CMAKE_MATCH_1}" pc)
  elseif(link STREQUAL "PkgConfig::PCRE2")
    # Debian's PCRE2 has no CMake package: make the same imported target pkg-config made here.
    set(find "if(NOT TARGET PkgConfig::PCRE2)\n  find_dependency(PkgConfig)\n  pkg_check_modules(PCRE2 REQUIRED QUIET IMPORTED_TARGET libpcre2-8)\nendif()")
    set(deb "libpcre2-dev, pkg-config")
    set(pc libpcre2-8)
  elseif(link STREQUAL "MPI::MPI_CXX")
    # MPI's C API, found as the main CMakeLists.txt finds it (without the C++ bindings).
    set(find "set(MPI_CXX_SKIP_MPICXX ON)\nfind_dependency(MPI COMPONENTS CXX)")
    set(deb libopenmpi-dev)
    set(pc ompi-c)
  elseif(link MATCHES "^CUDA::")
    set(find "find_dependency(CUDAToolkit)")
    set(deb "") # the CUDA toolkit is not a Debian package shardshift-dev can name
    set(pc "-L${CUDAToolkit_LIBRARY_DIR} -lcudart_static -ldl -lrt")
  else()
    message(FATAL_ERROR "cmake/Packaging.cmake: shardshift_lib links '${link}', which the "
                        "installed CMake package does not know how to find: add it to the table")
  endif()
  list(APPEND SHARDSHIFT_FIND_DEPENDENCIES "${find}")
  if(deb)
    list(APPEND SHARDSHIFT_DEV_DEPENDS "${deb}")
  endif()
  if(pc MATCHES "^-")
    list(APPEND SHARDSHIFT_PC_LIBS "${pc}")
  else()
    list(APPEND SHARDSHIFT_PC_REQUIRES "${pc}")
  endif()
endforeach()
list(REMOVE_DUPLICATES SHARDSHIFT_FIND_DEPENDENCIES)
list(REMOVE_DUPLICATES SHARDSHIFT_DEV_DEPENDS)
list(JOIN SHARDSHIFT_FIND_DEPENDENCIES "\n" SHARDSHIFT_FIND_DEPENDENCIES)
list(JOIN SHARDSHIFT_DEV_DEPENDS ", " SHARDSHIFT_DEV_DEPENDS)
list(REMOVE_DUPLICATES SHARDSHIFT_PC_REQUIRES)
list(REMOVE_DUPLICATES SHARDSHIFT_PC_LIBS)
list(JOIN SHARDSHIFT_PC_REQUIRES " " SHARDSHIFT_PC_REQUIRES)
list(JOIN SHARDSHIFT_PC_LIBS " " SHARDSHIFT_PC_LIBS)

set(SHARDSHIFT_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/shardshift)
install(EXPORT shardshiftTargets NAMESPACE shardshift:: DESTINATION ${SHARDSHIFT_CMAKE_DIR}
        FILE shardshiftTargets.cmake COMPONENT Development)
include(CMakePackageConfigHelpers)
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/shardshiftConfig.cmake.in
                              ${PROJECT_BINARY_DIR}/shardshiftConfig.cmake
                              INSTALL_DESTINATION ${SHARDSHIFT_CMAKE_DIR})
# 0.x: a new minor version may change the API, so only the same minor version is compatible.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/shardshiftConfigVersion.cmake
                                 COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/shardshiftConfig.cmake
              ${PROJECT_BINARY_DIR}/shardshiftConfigVersion.cmake
        DESTINATION ${SHARDSHIFT_CMAKE_DIR} COMPONENT Development)

# pkg-config: the library is static and there is no shared one, so everything it links is listed
# as a plain requirement (not .private): `pkg-config --cflags --libs shardshift` links a program.
# The prefix is found from the .pc file's own place, so the file is right wherever the tree is
# installed (cmake --install --prefix, the .deb's /usr).
file(RELATIVE_PATH SHARDSHIFT_PC_PREFIX_FROM_PCDIR /prefix/${CMAKE_INSTALL_LIBDIR}/pkgconfig /prefix)
string(REGEX REPLACE "/$" "" SHARDSHIFT_PC_PREFIX_FROM_PCDIR "${SHARDSHIFT_PC_PREFIX_FROM_PCDIR}")
configure_file(${PROJECT_SOURCE_DIR}/cmake/shardshift.pc.in ${PROJECT_BINARY_DIR}/shardshift.pc
               @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/shardshift.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig
        COMPONENT Development)

# --- Debian package (cpack -G DEB) --------------------------------------------------------------
set(CPACK_PACKAGE_NAME shardshift)
set(CPACK_PACKAGE_VENDOR "shardshift")
set(CPACK_PACKAGE_CONTACT "shardshift maintainers <shardshift@example.org>")
# Each package's description is its own summary line, then its text (CPack indents it); no
# CPACK_PACKAGE_DESCRIPTION_SUMMARY, which CPack would put before both packages' descriptions.
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_COMPONENTS_ALL Runtime Development)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT) # shardshift_0.1.0_amd64.deb
set(CPACK_DEBIAN_PACKAGE_SECTION science)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_RUNTIME_PACKAGE_NAME shardshift)
set(CPACK_DEBIAN_RUNTIME_PACKAGE_SECTION science)
set(CPACK_DEBIAN_RUNTIME_DESCRIPTION
    "convert Mixture-of-Experts checkpoints between Hugging Face and NeMo
shardshift converts safetensors checkpoints of Mixture-of-Experts models
(diffusion_gemma, gemma4_moe) between the Hugging Face layout and NeMo Automodel's native
layout as a stream with bounded memory: pass-through tensors are copied without reading them
(copy_file_range, reflinks), expert tensors are transposed with AVX2/AVX-512 kernels or on a
CUDA GPU.")
# Depends of the tool: the shared libraries it links, found by dpkg-shlibdeps (dpkg-dev).
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON) # a no-op for -dev, which holds no shared object
set(CPACK_DEBIAN_DEVELOPMENT_PACKAGE_NAME shardshift-dev)
set(CPACK_DEBIAN_DEVELOPMENT_PACKAGE_SECTION libdevel)
set(CPACK_DEBIAN_DEVELOPMENT_DESCRIPTION
    "shardshift C++ library: headers, static library, CMake and pkg-config files
The C++ API of shardshift, found with find_package(shardshift) as the target
shardshift::shardshift or with pkg-config: open and validate checkpoints, plan and run
conversions, or stream converted tensors to a program without writing files.")
# A static library and headers: a program built against them needs the -dev packages of what
# the library links (SHARDSHIFT_DEV_DEPENDS, made from its link libraries above).
set(CPACK_DEBIAN_DEVELOPMENT_PACKAGE_DEPENDS "${SHARDSHIFT_DEV_DEPENDS}")
set(CPACK_DEBIAN_DEVELOPMENT_PACKAGE_SUGGESTS "shardshift (= ${PROJECT_VERSION})")
set(CPACK_COMPONENT_RUNTIME_DESCRIPTION "the shardshift tool")
set(CPACK_COMPONENT_DEVELOPMENT_DESCRIPTION "the shardshift C++ library")
include(CPack)
