#!/usr/bin/env python3
"""Check that a shared object needs no more than baseline x86-64 outside its dispatched SIMD functions.

usage: check_isa.py [--allow REGEX] LIB.so [LIB.so ...]

Disassembles each library with ``objdump -d`` (it must still have its symbol
table: build with ``-C install.strip=false``) and looks, function by function,
for instructions beyond x86-64 baseline (SSE2): any VEX/EVEX instruction
(``v...`` mnemonics, AVX/AVX2/AVX-512/FMA), ymm/zmm/opmask registers, BMI1/2,
LZCNT/TZCNT/POPCNT/MOVBE/CRC32 and SSE3/SSSE3/SSE4.x instructions.

Functions whose name matches --allow (default: ``_avx2`` or ``_avx512`` in the
name, the suffixes of the kernels compiled with ``target("avx2,fma")`` /
``target("avx512f,...")`` in the csrc/*.template.* files and only called after the
run-time CPU check) may use them; anywhere else such an instruction would make
the library crash with SIGILL on an older CPU before or without dispatch.

Prints a summary per level and exits 1 if a non-dispatched function uses one.
"""
import argparse
import collections
import re
import subprocess
import sys

SSE3_PLUS = {
    # SSE3
    "addsubps", "addsubpd", "haddps", "haddpd", "hsubps", "hsubpd", "movddup", "movshdup",
    "movsldup", "lddqu", "monitor", "mwait",
    # SSSE3
    "pshufb", "phaddw", "phaddd", "phaddsw", "phsubw", "phsubd", "phsubsw", "pabsb", "pabsw",
    "pabsd", "palignr", "pmaddubsw", "pmulhrsw", "psignb", "psignw", "psignd",
    # SSE4.1
    "roundss", "roundsd", "roundps", "roundpd", "blendps", "blendpd", "blendvps", "blendvpd",
    "pblendw", "pblendvb", "ptest", "pmulld", "pmuldq", "pminsd", "pmaxsd", "pminud", "pmaxud",
    "pminsb", "pmaxsb", "pminuw", "pmaxuw", "pextrb", "pextrd", "pextrq", "pinsrb", "pinsrd",
    "pinsrq", "insertps", "extractps", "dpps", "dppd", "packusdw", "pcmpeqq", "mpsadbw",
    "phminposuw", "movntdqa", "pmovsxbw", "pmovsxbd", "pmovsxbq", "pmovsxwd", "pmovsxwq",
    "pmovsxdq", "pmovzxbw", "pmovzxbd", "pmovzxbq", "pmovzxwd", "pmovzxwq", "pmovzxdq",
    # SSE4.2, POPCNT, ABM/BMI, MOVBE
    "pcmpgtq", "pcmpestri", "pcmpestrm", "pcmpistri", "pcmpistrm", "crc32", "popcnt",
    "lzcnt", "tzcnt", "andn", "bextr", "blsi", "blsmsk", "blsr", "bzhi", "mulx", "pdep",
    "pext", "rorx", "sarx", "shlx", "shrx", "movbe",
}
NOT_VEX = {"verr", "verw"}  # old protected-mode instructions that happen to start with 'v'
FUNC = re.compile(r"^[0-9a-f]+ <(.+)>:$")
INSN = re.compile(r"^\s*[0-9a-f]+:\s+(.*)$")


def base_mnemonic(text):
    words = text.split()
    while words and words[0] in ("lock", "rep", "repz", "repnz", "repe", "repne", "data16",
                                 "notrack", "bnd", "addr32", "cs", "ds", "{vex}", "{evex}"):
        words = words[1:]
    if not words:
        return ""
    m = words[0]
    # AT&T size suffixes on the integer BMI/CNT instructions: popcntl, lzcntq, shlxq, crc32b ...
    for name in (m, m[:-1]):
        if name in SSE3_PLUS:
            return name
    return m


def classify(text):
    """Level an instruction needs beyond baseline x86-64, or None."""
    m = base_mnemonic(text)
    if not m:
        return None
    if "%zmm" in text or re.search(r"%k[0-7]\b", text) or "{%k" in text:
        return "avx512"
    if "%ymm" in text:
        return "avx/avx2"
    if m.startswith("v") and m not in NOT_VEX:
        return "avx (vex)"
    if m.startswith("kmov") or m.startswith("kortest"):
        return "avx512"
    if m in SSE3_PLUS:
        return "sse3+/bmi/popcnt"
    return None


def scan(path):
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-M", "suffix", path],
                         check=True, capture_output=True, text=True).stdout
    funcs = collections.defaultdict(collections.Counter)   # function -> level -> count
    examples = {}
    n_funcs = 0
    func = None
    for line in out.splitlines():
        fm = FUNC.match(line)
        if fm:
            func = fm.group(1)
            n_funcs += 1
            continue
        im = INSN.match(line)
        if not im or func is None:
            continue
        level = classify(im.group(1))
        if level:
            funcs[func][level] += 1
            examples.setdefault((func, level), im.group(1).strip())
    return n_funcs, funcs, examples


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--allow", default=r"_avx2|_avx512",
                    help="regex for names of dispatched functions that may use wider ISAs")
    ap.add_argument("libs", nargs="+")
    args = ap.parse_args(argv)
    allow = re.compile(args.allow)
    bad = 0
    for path in args.libs:
        syms = subprocess.run(["readelf", "-S", "-W", path], check=True, capture_output=True,
                              text=True).stdout
        if ".symtab" not in syms:
            print(f"{path}: stripped (no .symtab); cannot attribute instructions to functions. "
                  f"Build with -C install.strip=false.", file=sys.stderr)
            return 2
        n_funcs, funcs, examples = scan(path)
        allowed = {f: c for f, c in funcs.items() if allow.search(f)}
        others = {f: c for f, c in funcs.items() if not allow.search(f)}
        tot_allowed = sum((c for c in allowed.values()), collections.Counter())
        print(f"{path}:")
        print(f"  {n_funcs} functions disassembled; {len(allowed)} dispatched SIMD functions "
              f"(names matching {args.allow!r}) use: {dict(tot_allowed) or 'nothing beyond SSE2'}")
        if others:
            bad += len(others)
            print(f"  FAIL: {len(others)} function(s) outside the dispatched set need more than "
                  f"baseline x86-64 (SSE2):")
            for f, c in sorted(others.items()):
                lv = ", ".join(f"{k} x{v}" for k, v in c.items())
                ex = examples[(f, next(iter(c)))]
                print(f"    {f}: {lv}   e.g. '{ex}'")
        else:
            print(f"  OK: the other {n_funcs - len(allowed)} functions use only baseline "
                  f"x86-64 (SSE2) instructions")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
