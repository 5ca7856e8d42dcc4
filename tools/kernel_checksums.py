"""Bit-for-bit checksums of a backend's forward and backward, for refactors that must not
change a single bit (e.g. moving kernel code between files).

    python tools/kernel_checksums.py numba > before.json     # before the change
    python tools/kernel_checksums.py numba --compare before.json   # after: exit 1 on a difference

Every case (padded and packed lengths, with and without a projection and a bias, float32
and float64, shapes that take every tile and thread path) runs through the backend
contract (``pack``, ``forward``, ``backward``) with num_threads 1, 2 and 3, which must
agree with each other; the SHA-256 of each output array's bytes is recorded by name.
Outputs a version does not return (None) are left out, so a backend that newly returns
None for db without a bias still compares on everything else.

A backend that trains in bfloat16 (``TRAINS_BF16``: ``pack_bf16``, forward with save=True,
backward) also runs the float32 cases without a projection that way ("bf16 ..."); the saved
gates and c are hashed as float32 values (uint16 bfloat16 bit patterns widened), so a
change of their storage alone compares equal. The C backend runs those at every SIMD level
the CPU has and, where it has AVX512_BF16, with vdpbf16ps forced on and off.
"""
import argparse
import hashlib
import json
import sys

import numpy as np

from lstm_fast import backends

CASES = [  # (lengths or (T, B) padded, I, H, P, bias)
    ((6, 32), 3, 32, 0, True),
    ((5, 3), 7, 17, 0, True),
    ((3, 1), 4, 6, 0, True),              # B = 1: one-row tiles
    ((9, 1), 20, 33, 0, False),
    ((32, 16), 64, 64, 0, True),
    ((8, 64), 48, 96, 0, True),           # >= 8 sequences per thread: sequences split
    ((4, 20), 70, 200, 0, True),          # several blocks per thread, ragged H
    ((0, 2), 3, 4, 0, True),              # T = 0
    ((5, 3), 4, 6, 2, True),              # projection
    ((1, 1), 300, 400, 130, True),        # one-row GEMMs, K > KC
    ((5, 12), 70, 160, 100, True),        # projection, steps worth splitting
    ([5, 3, 3, 1, 0], 3, 4, 0, True),
    ([9, 7, 7, 4, 2, 1, 1, 0], 33, 50, 0, True),
    ([9, 7, 7, 4, 2, 1, 1, 0], 33, 50, 20, True),
    ([9] * 10 + [7] * 8 + [3] * 8 + [1] * 4 + [0] * 2, 20, 37, 0, True),
    ([9] * 10 + [7] * 8 + [3] * 8 + [1] * 4 + [0] * 2, 20, 37, 11, False),
    ([7, 7, 6, 5, 5, 2, 1, 1, 1], 40, 37, 20, True),
]
FWD = ("y", "h_n", "c_n", "gates", "c")
BWD = ("dx", "dw_ih", "dw_hh", "db", "dh0", "dc0", "dw_hr")


def _case_name(case, dtype):
    lengths, I, H, P, bias = case
    lay = "T{}B{}".format(*lengths) if isinstance(lengths, tuple) else "L" + "_".join(map(str, lengths))
    return f"{np.dtype(dtype).name} {lay} I{I} H{H} P{P}{'' if bias else ' nobias'}"


def _problem(case, dtype, seed):
    lengths, I, H, P, bias = case
    rng = np.random.default_rng(seed)
    R = P or H
    r = lambda *s: rng.uniform(-1, 1, size=s).astype(dtype) * dtype(H ** -0.5)
    if isinstance(lengths, tuple):
        T, B = lengths
        bs, lead = None, (T, B)
    else:
        B = len(lengths)
        bs = np.array([sum(1 for n in lengths if n > t) for t in range(max(lengths, default=0))], np.int64)
        lead = (int(bs.sum()),)
    w = dict(w_ih=r(4 * H, I), w_hh=r(4 * H, R), b=r(4 * H) if bias else None, w_hr=r(P, H) if P else None)
    a = dict(x=r(*lead, I), h0=r(B, R), c0=r(B, H))
    g = dict(dy=r(*lead, R), dh_n=r(B, R), dc_n=r(B, H))
    return w, a, g, bs


def _run(impl, case, dtype, num_threads, seed):
    w, a, g, bs = _problem(case, dtype, seed)
    packed = impl.pack(w["w_ih"], w["w_hh"], w["b"], w["w_hr"]) if w["w_hr"] is not None \
        else impl.pack(w["w_ih"], w["w_hh"], w["b"])
    out = impl.forward(packed, a["x"], a["h0"], a["c0"], num_threads, bs)
    grads = impl.backward(packed, a["x"], a["h0"], a["c0"], out[0], out[3], out[4],
                          g["dy"], g["dh_n"], g["dc_n"], num_threads, bs)
    res = {}
    for name, arr in zip(FWD + BWD, tuple(out) + tuple(grads)):
        if arr is not None:
            res[name] = hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()[:16]
    return res


def _as_values(a):
    """float32 values of a saved array: uint16 bfloat16 bit patterns widened."""
    a = np.ascontiguousarray(a)
    return (a.astype(np.uint32) << 16).view(np.float32) if a.dtype == np.uint16 else a


def _run_bf16(impl, case, num_threads, seed):
    w, a, g, bs = _problem(case, np.float32, seed)
    packed = impl.pack_bf16(w["w_ih"], w["w_hh"], w["b"])
    out = impl.forward(packed, a["x"], a["h0"], a["c0"], num_threads, bs, True)
    grads = impl.backward(packed, a["x"], a["h0"], a["c0"], out[0], out[3], out[4],
                          g["dy"], g["dh_n"], g["dc_n"], num_threads, bs)
    res = {}
    for name, arr in zip(FWD + BWD, tuple(out) + tuple(grads)):
        if arr is not None:
            res[name] = hashlib.sha256(_as_values(arr).tobytes()).hexdigest()[:16]
    return res


def _bf16_settings(impl):
    """(label, apply) pairs: the C backend's SIMD levels x vdpbf16ps on/off; else one."""
    if not hasattr(impl, "set_simd_level"):
        return [("", lambda: None)]
    order = ("portable", "avx2", "avx512")
    levels = order[:order.index(impl.cpu_simd_level()) + 1]
    natives = (True, False) if impl.cpu_has_avx512bf16() else (None,)
    out = []
    for level in levels:
        for native in natives if level == "avx512" else (None,):
            def apply(level=level, native=native):
                impl.set_simd_level(level)
                impl.set_bf16_native(native)
            out.append((f"{level}{'' if native is None else ' native' if native else ' emulated'} ", apply))
    return out


def checksums(name):
    impl = backends.get(name)
    table = {}
    for dtype in (np.float32, np.float64):
        for k, case in enumerate(CASES):
            runs = [_run(impl, case, dtype, n, seed=k) for n in (1, 2, 3)]
            if any(r != runs[0] for r in runs[1:]):
                raise AssertionError(f"{_case_name(case, dtype)}: bits depend on the thread count")
            table[_case_name(case, dtype)] = runs[0]
    if getattr(impl, "TRAINS_BF16", False):
        before = impl.simd_level() if hasattr(impl, "simd_level") else None
        try:
            for label, apply in _bf16_settings(impl):
                apply()
                for k, case in enumerate(CASES):
                    if case[3]:     # no projection in bfloat16 training
                        continue
                    runs = [_run_bf16(impl, case, n, seed=k) for n in (1, 2, 3)]
                    key = f"bf16 {label}{_case_name(case, np.float32)}"
                    if any(r != runs[0] for r in runs[1:]):
                        raise AssertionError(f"{key}: bits depend on the thread count")
                    table[key] = runs[0]
        finally:
            if before is not None:
                impl.set_simd_level(before)
                impl.set_bf16_native(None)
    return table


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("backend", nargs="?", default="numba")
    ap.add_argument("--compare", metavar="JSON", help="compare with an earlier output; exit 1 on a difference")
    args = ap.parse_args(argv)
    table = checksums(args.backend)
    if not args.compare:
        json.dump(table, sys.stdout, indent=1, sort_keys=True)
        print()
        return 0
    with open(args.compare) as f:
        before = json.load(f)
    bad = 0
    compared = 0
    for case, old in before.items():
        new = table.get(case, {})
        for out, digest in old.items():
            if out not in new:
                print(f"{case} {out}: not returned now (was {digest})")
                continue
            compared += 1
            if new[out] != digest:
                bad += 1
                print(f"{case} {out}: {digest} -> {new[out]}")
    print(f"{compared} arrays compared over {len(before)} cases, {bad} differ")
    return 1 if bad or compared == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
