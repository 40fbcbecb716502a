# PackagingTests.cmake: the tests of cmake/Packaging.cmake's products, registered with ctest.
#   Install.ConsumerBuildsAgainstPrefix (install): cmake --install into a temporary prefix, a
#     find_package(shardshift) project built against it converts a checkpoint (tests/install_consumer)
#   Install.DebianPackages (install): cpack -G DEB, then the control data and file lists
#     (scripts/package.sh); skipped without dpkg-shlibdeps
#   Completion.OffersEveryFlag (e2e): the bash completion offers every command, flag and model
#     the binary's --help and --version list (tests/completion_test.sh)
# Each takes a few seconds (the consumer's build, ~20 s, is the longest).
# A sanitizer build's library needs the sanitizer runtimes in whatever links it: nobody installs
# or packages one, so its install tests are not registered.
if(NOT SHARDSHIFT_SANITIZE)
add_test(NAME Install.ConsumerBuildsAgainstPrefix
         COMMAND ${PROJECT_SOURCE_DIR}/tests/install_consumer/run_test.sh ${PROJECT_BINARY_DIR}
                 ${PROJECT_SOURCE_DIR})
add_test(NAME Install.DebianPackages
         COMMAND sh -c "command -v dpkg-shlibdeps >/dev/null || exit 77; exec \"$0\" \"$1\" \"$2\""
                 ${PROJECT_SOURCE_DIR}/scripts/package.sh ${PROJECT_BINARY_DIR}
                 ${PROJECT_BINARY_DIR}/package-test)
set_tests_properties(Install.ConsumerBuildsAgainstPrefix Install.DebianPackages
                     PROPERTIES LABELS install TIMEOUT 300)
set_tests_properties(Install.DebianPackages PROPERTIES SKIP_RETURN_CODE 77)
endif()
add_test(NAME Completion.OffersEveryFlag
         COMMAND bash ${PROJECT_SOURCE_DIR}/tests/completion_test.sh $<TARGET_FILE:shardshift>
                 ${SHARDSHIFT_COMPLETION})
set_tests_properties(Completion.OffersEveryFlag PROPERTIES LABELS e2e TIMEOUT 60)

# version_e2e_test compares `shardshift --version` with the project's version.
if(TARGET version_e2e_test)
  target_compile_definitions(version_e2e_test PRIVATE
                             SHARDSHIFT_PROJECT_VERSION="${PROJECT_VERSION}")
endif()
