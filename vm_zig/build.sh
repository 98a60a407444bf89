#!/bin/sh
# One entry point for the Makefile. Uses `python -m ziglang` from the project's .venv (or $PYTHON),
# so the pinned ziglang==0.17.1 wheel is the only toolchain.
#
#   vm_zig/build.sh lib           native + aarch64-linux-gnu shared libraries
#                                 -> zig-out/lib/libgibsey_vm.so, zig-out/aarch64/libgibsey_vm.so
#   vm_zig/build.sh test          Zig unit tests, native
#   vm_zig/build.sh test-aarch64  Zig unit tests for aarch64-linux-musl under qemu-aarch64-static
#   vm_zig/build.sh all           lib, test, test-aarch64
#   vm_zig/build.sh clean         remove zig-out and the local cache
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
# $PYTHON picks the interpreter (tests pass their own); else the project's .venv (where `make`
# installed ziglang; this script is also run by hand, as images/README.md shows); else the first
# python3 on PATH.
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$here/../.venv/bin/python" ]; then PYTHON="$here/../.venv/bin/python"; else PYTHON=python3; fi
fi
if ! "$PYTHON" -c "import ziglang" 2>/dev/null; then
    echo "vm_zig/build.sh: $PYTHON has no ziglang (the pinned Zig toolchain): run \`make setup\` first, or set PYTHON" >&2
    exit 2
fi
zig() { "$PYTHON" -m ziglang "$@"; }
# Local cache next to the sources; the global cache (~/.cache/zig) stays Zig's default.
cache="--cache-dir $here/.zig-cache"

target=${1:-lib}
case "$target" in
  lib)
    zig build $cache --summary none
    ;;
  test)
    zig build test $cache --summary none
    ;;
  test-aarch64)
    if ! command -v "${QEMU_AARCH64:-qemu-aarch64-static}" >/dev/null 2>&1; then
      echo "build.sh: ${QEMU_AARCH64:-qemu-aarch64-static} not found (apt-get install qemu-user-static)" >&2
      exit 3
    fi
    zig build test-aarch64 $cache --summary none -Dqemu="${QEMU_AARCH64:-qemu-aarch64-static}"
    ;;
  all)
    "$0" lib && "$0" test && "$0" test-aarch64
    ;;
  clean)
    rm -rf zig-out .zig-cache
    ;;
  *)
    echo "usage: $0 [lib|test|test-aarch64|all|clean]" >&2
    exit 2
    ;;
esac
