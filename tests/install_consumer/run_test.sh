#!/usr/bin/env bash
# The install test (ctest label install): installs the build tree into a temporary prefix, checks
# the installed layout, builds tests/install_consumer against the prefix with find_package and
# runs it (it converts a tiny checkpoint through the public API), then builds it again with the
# flags pkg-config gives.
# Usage: run_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1
source_dir=$2
tmp=$(mktemp -d "${TMPDIR:-/tmp}/shardshift-install.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
prefix=$tmp/prefix

cmake --install "$build" --prefix "$prefix" >/dev/null

fail() { echo "install test: $*" >&2; exit 1; }
for f in bin/shardshift include/shardshift/convert.h include/shardshift/tensor_stream.h \
         include/shardshift/version.h share/bash-completion/completions/shardshift; do
  [ -e "$prefix/$f" ] || fail "$f is not installed"
done
if command -v help2man >/dev/null; then
  [ -e "$prefix/share/man/man1/shardshift.1.gz" ] || fail "the man page is not installed"
fi
libdir=$(dirname "$(find "$prefix" -name libshardshift.a | head -1)")
[ -f "$libdir/libshardshift.a" ] || fail "libshardshift.a is not installed"
[ -f "$libdir/cmake/shardshift/shardshiftConfig.cmake" ] || fail "no CMake package"
[ -f "$libdir/cmake/shardshift/shardshiftConfigVersion.cmake" ] || fail "no CMake version file"
# The installed tool runs and says its version.
# (The output is captured first: under pipefail, `| head -1` could fail the line with SIGPIPE.)
version=$("$prefix/bin/shardshift" --version) || fail "--version failed"
[[ "${version%%$'\n'*}" =~ ^shardshift\ [0-9] ]] || fail "--version: $version"

# pkg-config: the prefix is found from the .pc file's place, so -I names the installed headers.
if command -v pkg-config >/dev/null; then
  cflags=$(PKG_CONFIG_PATH="$libdir/pkgconfig" pkg-config --cflags shardshift)
  include=$(grep -oE -- '-I[^ ]+' <<<"$cflags" | head -1)
  [ -f "${include#-I}/shardshift/convert.h" ] || fail "pkg-config --cflags: $cflags"
  libs=$(PKG_CONFIG_PATH="$libdir/pkgconfig" pkg-config --libs shardshift)
  case $libs in *"-lshardshift"*) ;; *) fail "pkg-config --libs: $libs" ;; esac
fi

# A C++ project that only knows the prefix.
cmake -S "$source_dir/tests/install_consumer" -B "$tmp/consumer" -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_PREFIX_PATH="$prefix" >"$tmp/configure.log" 2>&1 \
  || { cat "$tmp/configure.log" >&2; fail "the consumer does not configure"; }
cmake --build "$tmp/consumer" -j2 >"$tmp/build.log" 2>&1 \
  || { cat "$tmp/build.log" >&2; fail "the consumer does not build"; }
mkdir "$tmp/work"
"$tmp/consumer/consumer" "$tmp/work"

# The same program built by hand with what pkg-config says, as a Makefile would.
if command -v pkg-config >/dev/null; then
  # shellcheck disable=SC2086
  ${CXX:-c++} -o "$tmp/consumer-pc" "$source_dir/tests/install_consumer/main.cpp" $cflags $libs \
    || fail "the consumer does not build with pkg-config's flags"
  mkdir "$tmp/work-pc"
  "$tmp/consumer-pc" "$tmp/work-pc" >/dev/null
fi
