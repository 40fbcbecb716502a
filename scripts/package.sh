#!/usr/bin/env bash
# Builds the Debian packages with CPack from a configured and built tree, and checks them:
#   shardshift_VERSION_ARCH.deb      the tool, its man page and bash completion; Depends computed
#                                    by dpkg-shlibdeps from the libraries it links
#   shardshift-dev_VERSION_ARCH.deb  headers, libshardshift.a, the CMake package, shardshift.pc
# Usage: scripts/package.sh [BUILD_DIR [OUT_DIR]]   (defaults: build, BUILD_DIR)
# Needs dpkg-dev (dpkg-shlibdeps) and file; scripts/setup.sh installs them. For packages whose
# library lands in /usr/lib/<multiarch>, configure with -DCMAKE_INSTALL_PREFIX=/usr.
set -euo pipefail
cd "$(dirname "$0")/.."
build=$(realpath "${1:-build}")
out=$(realpath -m "${2:-$build}")
mkdir -p "$out"

fail() { echo "package: $*" >&2; exit 1; }
[ -f "$build/CPackConfig.cmake" ] || fail "$build is not a configured build tree"
command -v dpkg-shlibdeps >/dev/null || fail "dpkg-shlibdeps is missing (apt install dpkg-dev)"

# CPack works under OUT/_CPack_Packages; the packages land in OUT.
cpack -G DEB --config "$build/CPackConfig.cmake" -B "$out" >"$out/cpack.log" 2>&1 \
  || { cat "$out/cpack.log" >&2; fail "cpack failed"; }
rm -rf "$out/_CPack_Packages"

version=$(sed -n 's/^set(CPACK_PACKAGE_VERSION "\(.*\)")$/\1/p' "$build/CPackConfig.cmake")
arch=$(dpkg --print-architecture)
tool=$out/shardshift_${version}_${arch}.deb
dev=$out/shardshift-dev_${version}_${arch}.deb
[ -f "$tool" ] || fail "no $tool (cpack.log: $out/cpack.log)"
[ -f "$dev" ] || fail "no $dev (cpack.log: $out/cpack.log)"

# The control data: name, maintainer, description, and Depends on the libraries the tool links.
control=$(dpkg-deb -f "$tool")
depends=$(dpkg-deb -f "$tool" Depends)
grep -q '^Package: shardshift$' <<<"$control" || fail "$tool: Package is not shardshift"
grep -q '^Maintainer: .' <<<"$control" || fail "$tool: no Maintainer"
grep -q '^Description: .' <<<"$control" || fail "$tool: no Description"
for lib in libtbb libsimdjson libboost-program-options libc6 libstdc++6; do
  grep -q "$lib" <<<"$depends" || fail "$tool: Depends lacks $lib: $depends"
done
# The files: the tool, its man page and its completion; headers only in -dev.
files=$(dpkg-deb -c "$tool")
for f in ./usr/bin/shardshift ./usr/share/man/man1/shardshift.1.gz \
         ./usr/share/bash-completion/completions/shardshift; do
  grep -q " $f\$" <<<"$files" || fail "$tool lacks $f"
done
grep -q '/include/' <<<"$files" && fail "$tool holds headers (they belong in -dev)"
# The man page holds every command's --help and keeps the examples one per line (verbatim).
man=$(dpkg-deb --fsys-tarfile "$tool" | tar -xOf - ./usr/share/man/man1/shardshift.1.gz | gzip -dc)
for command in convert plan verify inspect synth; do
  grep -q "^\.SS \"shardshift $command\"" <<<"$man" || fail "man page lacks 'shardshift $command'"
done
grep -A1 '^\.SH EXAMPLES' <<<"$man" | grep -q '^\.nf' || fail "man page: EXAMPLES is not verbatim"
dev_files=$(dpkg-deb -c "$dev")
for f in ./usr/include/shardshift/convert.h ./usr/include/shardshift/tensor_stream.h \
         /libshardshift.a /cmake/shardshift/shardshiftConfig.cmake /pkgconfig/shardshift.pc; do
  grep -q "$f\$" <<<"$dev_files" || fail "$dev lacks $f"
done
dpkg-deb -f "$dev" Depends | grep -q libtbb-dev || fail "$dev: Depends lacks libtbb-dev"

echo "$tool"
echo "  Depends: $depends"
echo "$dev"
echo "  Depends: $(dpkg-deb -f "$dev" Depends)"
