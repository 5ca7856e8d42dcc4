#!/usr/bin/env bash
# tools/sanitize.sh: the C kernel under AddressSanitizer + UndefinedBehaviorSanitizer
# and under valgrind memcheck.
#
#   1. builds the extension with -DLSTM_FAST_SANITIZE=ON (see CMakeLists.txt) into
#      its own venv and build dir under $SAN_DIR; the main (editable) install of
#      the checkout is not touched;
#   2. runs the kernel tests (tests/test_ckernel.py, the "c-" cases of
#      tests/test_contract.py, tests/test_threads.py, tests/test_threads_torch.py,
#      the LSTM variants' tests/test_variants.py, bfloat16's tests/test_bf16.py and
#      tests/test_bf16_training.py,
#      int8's tests/test_int8.py, both in tests/test_low_precision.py and the C cases of the recurrent dropout,
#      zoneout and layer norm tests; not the churn model's, which needs the churn extra)
#      with the ASan runtime preloaded; any ASan or UBSan report fails the run;
#   3. builds the extension without sanitizers into a second venv and runs a
#      small forward/backward (every SIMD level valgrind can run, f32/f64,
#      1 and 2 threads, padded and packed lengths, 2-thread jobs on our own pool
#      and on a loaded libgomp's team) under valgrind memcheck.
#
# The venvs reuse the packages of the base interpreter (numpy, pytest, cython,
# scikit-build-core, ...) through a plain path entry, so the base's .pth files,
# among them an editable lstm_fast, are not run: the venvs see only their own
# lstm_fast build. Nothing is downloaded.
#
# Usage: tools/sanitize.sh [--asan-only | --valgrind-only] [extra pytest args]
# Env:   SAN_DIR (default /tmp/lstm_fast_sanitize), PYTHON (default python3).
# Exit status 0 only if every step is clean.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SAN_DIR=${SAN_DIR:-/tmp/lstm_fast_sanitize}
PY=${PYTHON:-python3}
DO_ASAN=1
DO_VG=1
case "${1:-}" in
  --asan-only) DO_VG=0; shift ;;
  --valgrind-only) DO_ASAN=0; shift ;;
esac
mkdir -p "$SAN_DIR"
T0=$(date +%s)
log() { echo "[sanitize.sh +$(( $(date +%s) - T0 ))s] $*"; }

BASE_SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

make_venv() {   # make_venv DIR: venv that sees the base's packages but not its .pth hooks
  local dir=$1
  [ -x "$dir/bin/python" ] || "$PY" -m venv --without-pip "$dir"
  local site
  site=$("$dir/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "$BASE_SITE" > "$site/zz_lstm_fast_base_site.pth"
}

build() {   # build VENV BUILD_DIR SANITIZE(ON/OFF)
  local venv=$1 bdir=$2 san=$3
  log "building (LSTM_FAST_SANITIZE=$san) into $venv, build dir $bdir"
  # an earlier run's package goes first: --ignore-installed writes over it without removing
  # files, and a stale extension with another suffix (cpython-311 vs abi3) would be imported
  rm -rf "$venv"/lib/python*/site-packages/lstm_fast "$venv"/lib/python*/site-packages/lstm_fast-*.dist-info
  "$venv/bin/python" -m pip install --quiet --no-build-isolation --no-deps --ignore-installed \
      --disable-pip-version-check "$REPO" -Cbuild-dir="$bdir" \
      -Ccmake.define.LSTM_FAST_SANITIZE="$san" > "$SAN_DIR/pip-$san.log" 2>&1 ||
    { tail -40 "$SAN_DIR/pip-$san.log"; echo "build failed: $SAN_DIR/pip-$san.log"; exit 2; }
  # the venv must import its own build, not the checkout's
  local preload=
  [ "$san" = ON ] && preload=$(gcc -print-file-name=libasan.so)
  (cd "$SAN_DIR" && LD_PRELOAD=$preload ASAN_OPTIONS=detect_leaks=0 \
      "$venv/bin/python" - "$venv" "$san" <<'EOF'
import sys
venv, san = sys.argv[1], sys.argv[2]
import lstm_fast.backends._c as k
assert k.__file__.startswith(venv), f"imported {k.__file__}, not the build in {venv}"
flags = k.build_info()["flags"]
assert ("-fsanitize=address" in flags) == (san == "ON"), flags
print("  using", k.__file__, "flags:", flags)
EOF
  )
}

status=0

if [ "$DO_ASAN" = 1 ]; then
  ASAN_VENV=$SAN_DIR/venv-asan
  make_venv "$ASAN_VENV"
  build "$ASAN_VENV" "$SAN_DIR/build-asan" ON
  LIBASAN=$(gcc -print-file-name=libasan.so)
  log "pytest under ASan+UBSan (LD_PRELOAD=$LIBASAN)"
  # detect_leaks=0: CPython keeps much alive at exit by design; the kernel never
  # allocates, and test_robustness checks memory growth separately.
  # detect_stack_use_after_return=0: with it, ASan moves stack frames to a "fake
  # stack" whose frames it does not align beyond 32 bytes (fixed in LLVM's runtime
  # in 2025, llvm/llvm-project#152819 and #91565; GCC 12's libasan predates it).
  # Every frame holding an AVX-512 vector or a 64-byte-aligned tile buffer then
  # faults on the compiler's aligned moves (seen in bwd_job_f32_avx512 at a
  # vmovdqa64 into a fake frame 32 bytes off a 64-byte boundary): a fault of the
  # sanitizer's runtime, not of the code it checks. Stack overflows, heap and
  # global errors are still checked.
  (cd "$REPO" && env LD_PRELOAD="$LIBASAN" \
      ASAN_OPTIONS=detect_leaks=0:abort_on_error=0:halt_on_error=1:detect_stack_use_after_return=0 \
      UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
      "$ASAN_VENV/bin/python" -m pytest -p no:cacheprovider -q \
      tests/test_ckernel.py tests/test_contract.py tests/test_threads.py \
      tests/test_threads_torch.py tests/test_variants.py tests/test_bf16.py tests/test_int8.py \
      tests/test_low_precision.py tests/test_recurrent_dropout.py tests/test_zoneout.py \
      tests/test_layer_norm.py tests/test_bf16_training.py \
      -k "(test_ckernel or test_threads or c- or c] or bf16 or int8 or low_precision) and not churn" \
      "$@") || asan_status=1
  log "ASan+UBSan pytest: $([ "${asan_status:-0}" = 0 ] && echo clean || echo FAILED)"
  status=${asan_status:-0}
fi

if [ "$DO_VG" = 1 ]; then
  VG_VENV=$SAN_DIR/venv-plain
  make_venv "$VG_VENV"
  build "$VG_VENV" "$SAN_DIR/build-plain" OFF
  cat > "$SAN_DIR/vg_small.py" <<'EOF'
"""Small forward/backward on every SIMD level valgrind can run, checked against
the NumPy reference (valgrind reports no AVX-512, so the CPU level seen here is
at most avx2)."""
import numpy as np
from lstm_fast.backends import _c as ck, reference as ref

order = ("portable", "avx2", "avx512")
levels = order[:order.index(ck.cpu_simd_level()) + 1]
print("levels:", levels, flush=True)
for level in levels:
    ck.set_simd_level(level)
    for dtype in (np.float32, np.float64):
        for T, B, I, H, bias in ((3, 2, 5, 17, True), (4, 3, 2, 8, False), (0, 2, 3, 4, True)):
            rng = np.random.default_rng(T * 100 + H)
            r = lambda *s: rng.uniform(-0.5, 0.5, s).astype(dtype)
            w_ih, w_hh, b = r(4 * H, I), r(4 * H, H), (r(4 * H) if bias else None)
            x, h0, c0, dy, dh, dc = r(T, B, I), r(B, H), r(B, H), r(T, B, H), r(B, H), r(B, H)
            p = ck.pack(w_ih, w_hh, b)
            want_f = ref.lstm_forward(x, w_ih, w_hh, b, h0, c0)
            want_b = ref.lstm_backward(x, w_ih, w_hh, h0, c0, *want_f[:1], *want_f[3:], dy, dh, dc)
            tol = 1e-4 if dtype == np.float32 else 1e-10
            for nth in (1, 2):
                f = ck.forward(p, x, h0, c0, nth)
                g = ck.backward(p, x, h0, c0, f[0], f[3], f[4], dy, dh, dc, nth)
                for a, e in zip(tuple(f) + tuple(g), tuple(want_f) + tuple(want_b)):
                    if a is not None:   # db without a bias: None here, zeros there
                        np.testing.assert_allclose(a, e, rtol=tol, atol=tol)
            if T > 0 and B > 1:   # packed variable lengths, if this build has them
                bs = np.array([B] * (T - 1) + [1], dtype=np.int64)
                xp = np.concatenate([x[t, :n] for t, n in enumerate(bs)])
                try:
                    ck.forward(p, xp, h0, c0, 2, bs)
                except TypeError:
                    pass
# 2-thread jobs on the host's OpenMP team (pool.c uses a libgomp the process has
# loaded; torch would load its own, too slow to import under valgrind)
import ctypes
ctypes.CDLL("libgomp.so.1")
assert ck.build_info()["threading"].startswith("host OpenMP"), ck.build_info()["threading"]
for dtype in (np.float32, np.float64):
    rng = np.random.default_rng(5)
    r = lambda *s: rng.uniform(-0.5, 0.5, s).astype(dtype)
    T, B, I, H = 4, 5, 3, 33
    p = ck.pack(r(4 * H, I), r(4 * H, H), r(4 * H))
    x, h0, c0, dy, dh, dc = r(T, B, I), r(B, H), r(B, H), r(T, B, H), r(B, H), r(B, H)
    outs = []
    for nth in (1, 2):
        f = ck.forward(p, x, h0, c0, nth)
        g = ck.backward(p, x, h0, c0, f[0], f[3], f[4], dy, dh, dc, nth)
        outs.append(b"".join(a.tobytes() for a in tuple(f) + tuple(g) if a is not None))
    assert outs[0] == outs[1], "host-team 2-thread bits differ from 1 thread"
print("valgrind small forward/backward: ok", flush=True)
EOF
  # Suppressed: reports whose innermost frame is in the interpreter (this
  # pyenv libpython, PGO/LTO-built, trips memcheck in its int and refcount code
  # even with PYTHONMALLOC=malloc) and the dynamic loader's strncmp over-read
  # while expanding $ORIGIN rpaths. Reports with the innermost frame in
  # _ckernel, numpy or libc are not suppressed: the kernel's outputs all go
  # through numpy (assert_allclose) before Python sees them.
  cat > "$SAN_DIR/python.supp" <<'EOF'
{
   libpython-cond
   Memcheck:Cond
   obj:*/libpython3*
}
{
   libpython-value8
   Memcheck:Value8
   obj:*/libpython3*
}
{
   ldso-rpath-strncmp
   Memcheck:Addr8
   fun:strncmp
   fun:is_dst
}
EOF
  log "valgrind memcheck (PYTHONMALLOC=malloc)"
  (cd "$SAN_DIR" && PYTHONMALLOC=malloc valgrind --tool=memcheck --error-exitcode=1 \
      --leak-check=no --track-origins=yes --num-callers=30 \
      --suppressions="$SAN_DIR/python.supp" \
      --log-file="$SAN_DIR/valgrind.log" "$VG_VENV/bin/python" "$SAN_DIR/vg_small.py") ||
    { vg_status=1; grep -A30 "Invalid\|uninitialised\|Uninitialised" "$SAN_DIR/valgrind.log" | head -80 || true; }
  grep "ERROR SUMMARY" "$SAN_DIR/valgrind.log" | tail -1 || true
  log "valgrind: $([ "${vg_status:-0}" = 0 ] && echo clean || echo FAILED) (log $SAN_DIR/valgrind.log)"
  [ "${vg_status:-0}" = 0 ] || status=1
fi

log "done, status $status"
exit $status
