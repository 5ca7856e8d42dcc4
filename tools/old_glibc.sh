#!/usr/bin/env bash
# The wheel's manylinux_2_17 tag checked on a real glibc older than 2.34 (issue 20).
#
#   tools/old_glibc.sh [WHEEL]      # e.g. wheelhouse/lstm_fast-*-manylinux_2_17_x86_64.whl
#
# auditwheel and build_wheel.sh only read symbol versions; this runs the code. glibc 2.34
# moved the pthread and dl functions into libc.so.6; the wheel pins them to their old
# versions (csrc/glibc_compat.h), which an older glibc must then find in libpthread.so.0
# and libdl.so.2. Steps:
#  1. a Debian bullseye chroot (glibc 2.31, Python 3.9) in $OLD_GLIBC_DIR, made once with
#     debootstrap (apt-get installs it if missing; needs root and Debian's mirror)
#  2. CMake builds the kernel library (target lstm_kernel: the wheel's flags and pins), linked
#     as a shared library with the extension's link options (CMakeLists.txt); objdump: no
#     symbol version above GLIBC_2.17
#  3. in the chroot: tools/old_glibc_smoke.py on it (values vs plain Python, the thread pool)
#  4. with WHEEL: its extension dlopen'ed in the chroot (RTLD_LAZY): glibc's version checks
#     must pass; Python 3.9 there lacks 3.11's symbols (Py_Version), so an undefined Python
#     symbol is the expected end of the load (the extension needs CPython >= 3.11)
# A control library linked here without the pins must fail step 3's load in the chroot
# ("GLIBC_2.34 not found"), so the chroot is known to tell the difference.
# Not in CI: it depends on bullseye staying on Debian's mirror. About 3 min the first time.
# Env: OLD_GLIBC_DIR (default /tmp/lstm_fast_old_glibc), OLD_GLIBC_SUITE (default bullseye),
#      PYTHON (for CMake's configure; default python3)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${OLD_GLIBC_DIR:-/tmp/lstm_fast_old_glibc}"
SUITE="${OLD_GLIBC_SUITE:-bullseye}"
PY="${PYTHON:-python3}"
WHEEL="${1:-}"
CH="$DIR/$SUITE"
mkdir -p "$DIR"

echo "=== 1. $SUITE chroot in $CH"
if [ ! -x "$CH/usr/bin/python3" ]; then
  command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }
  rm -rf "$CH"
  debootstrap --variant=minbase --include=python3 "$SUITE" "$CH" http://deb.debian.org/debian > "$DIR/debootstrap.log"
fi
in_chroot() { chroot "$CH" /usr/bin/env -i PATH=/usr/bin:/bin LD_BIND_NOW=1 "$@"; }
in_chroot python3 -c 'import os, sys; print(os.confstr("CS_GNU_LIBC_VERSION"), "python", sys.version.split()[0])'
mountpoint -q "$CH/proc" || mount -t proc proc "$CH/proc"
trap 'umount "$CH/proc" 2>/dev/null || true' EXIT

echo "=== 2. the kernel library as the wheel links it"
B="$DIR/build"
cmake -S "$ROOT" -B "$B" -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE="$(command -v "$PY")" > "$DIR/cmake.log"
cmake --build "$B" --target lstm_kernel -j 2 > "$DIR/build.log"
grep -q 'LSTM_GLIBC_2_34:INTERNAL=1' "$B/CMakeCache.txt" || echo "  (the build glibc is older than 2.34: no pins needed)"
# The extension's link options for the pins (CMakeLists.txt, target_link_options).
gcc -shared -o "$DIR/libkernel.so" -Wl,--whole-archive "$B/liblstm_kernel.a" -Wl,--no-whole-archive \
  -Wl,-z,defs -Wl,--push-state,--no-as-needed,-l:libpthread.so.0,-l:libdl.so.2,--pop-state
objdump -T "$DIR/libkernel.so" | grep -oE 'GLIBC_[0-9.]+' | sort -uV | tr '\n' ' '; echo
newest="$(objdump -T "$DIR/libkernel.so" | grep -oE 'GLIBC_[0-9.]+' | sort -uV | tail -1)"
[ "$(printf '%s\n' "$newest" GLIBC_2.17 | sort -V | tail -1)" = GLIBC_2.17 ] \
  || { echo "kernel library needs $newest" >&2; exit 1; }

echo "=== control: a library linked here without the pins must not load there"
printf '#include <pthread.h>\nstatic void *f(void *a) { return a; }\nint g(void) { pthread_t t; return pthread_create(&t, 0, f, 0); }\n' > "$DIR/nopin.c"
gcc -shared -fPIC -O2 "$DIR/nopin.c" -o "$CH/tmp/nopin.so"
if out="$(in_chroot python3 -c 'import ctypes; ctypes.CDLL("/tmp/nopin.so")' 2>&1)"; then
  echo "the chroot loaded an unpinned library: its glibc is not older than 2.34" >&2; exit 1
fi
echo "  refused as expected: $(tail -1 <<<"$out")"

echo "=== 3. old_glibc_smoke.py in the chroot"
cp "$DIR/libkernel.so" "$ROOT/tools/old_glibc_smoke.py" "$CH/tmp/"
in_chroot python3 /tmp/old_glibc_smoke.py /tmp/libkernel.so

if [ -n "$WHEEL" ]; then
  echo "=== 4. the wheel's extension loaded in the chroot: $(basename "$WHEEL")"
  rm -rf "$DIR/wheel" && mkdir -p "$DIR/wheel"
  "$PY" -m zipfile -e "$WHEEL" "$DIR/wheel"
  cp "$DIR"/wheel/lstm_fast/backends/_c*.so "$CH/tmp/ext.so"
  out="$(in_chroot python3 -c '
import ctypes, os
ctypes.CDLL("/tmp/ext.so", mode=os.RTLD_LAZY | os.RTLD_LOCAL)
print("loaded")' 2>&1 || true)"
  echo "  $(tail -1 <<<"$out")"
  case "$out" in
    *"version \`GLIBC"*|*"not found"*|*"cannot open shared object"*)
      echo "the extension's libraries or symbol versions are missing on $SUITE" >&2; exit 1 ;;
    *loaded*|*"undefined symbol: Py"*|*"undefined symbol: _Py"*)
      echo "  OK: glibc's version checks passed (an undefined Python symbol: this Python is older than 3.11)" ;;
    *) echo "unexpected result" >&2; exit 1 ;;
  esac
fi
echo "old_glibc.sh: OK"
