"""The C kernel, linked as the wheel links it, run on an older glibc (tools/old_glibc.sh).

Runs inside a Debian chroot whose glibc predates 2.34 (pthread and dl functions still in
libpthread.so.0 and libdl.so.2) and whose Python is older than 3.11, so the abi3 extension
itself cannot be imported there: this drives the kernel library built from the same objects
and link options (csrc/glibc_compat.h pins) through ctypes, no NumPy needed.

  python3 old_glibc_smoke.py LIBKERNEL.so

Checks: values against a plain-Python LSTM (float32, small shape); 1 and 2 threads give
identical bits at a shape where the pool runs (pthread_create, pthread_mutex_trylock,
pthread_once); a pool thread really exists afterwards (needs /proc).
"""
import ctypes as C
import math
import os
import random
import sys

lib = C.CDLL(sys.argv[1])
i64, vp, fp = C.c_int64, C.c_void_p, C.POINTER(C.c_float)
lib.lstm_packed_size_f32.restype = C.c_size_t
lib.lstm_packed_size_f32.argtypes = [i64, i64, i64]
lib.lstm_forward_workspace_size_f32.restype = C.c_size_t
lib.lstm_forward_workspace_size_f32.argtypes = [i64] * 5 + [C.c_int, C.c_int]
lib.lstm_pack_f32.argtypes = [i64, i64, i64, fp, fp, fp, fp, vp]
lib.lstm_forward_f32.argtypes = [i64] * 5 + [vp, vp] + [fp] * 8 + [vp, C.c_int]
lib.lstm_build_info.restype = C.c_char_p
print("glibc:", os.confstr("CS_GNU_LIBC_VERSION"), "| python", sys.version.split()[0])
print("kernel:", lib.lstm_build_info().decode().split(";")[2])
rnd = random.Random(0)


def arr(n, scale=0.5):
    return (C.c_float * n)(*[rnd.uniform(-scale, scale) for _ in range(n)])


def problem(T, B, I, H):
    return arr(4 * H * I), arr(4 * H * H), arr(4 * H), arr(T * B * I, 1), arr(B * H), arr(B * H)


def run(T, B, I, H, threads, w):
    w_ih, w_hh, b, x, h0, c0 = w
    pk = (C.c_char * lib.lstm_packed_size_f32(I, H, 0))()
    assert lib.lstm_pack_f32(I, H, 0, w_ih, w_hh, b, None, pk) == 0
    ws = (C.c_char * lib.lstm_forward_workspace_size_f32(T, B, I, H, 0, threads, 0))()
    y, hn, cn = (C.c_float * (T * B * H))(), (C.c_float * (B * H))(), (C.c_float * (B * H))()
    status = lib.lstm_forward_f32(T, B, I, H, 0, pk, None, x, h0, c0, y, hn, cn, None, None,
                                  ws, threads)
    assert status == 0, status
    return list(y), list(hn), list(cn)


# Values: a plain-Python LSTM (gates i, f, g, o, as torch.nn.LSTM).
T, B, I, H = 3, 2, 3, 4
w = problem(T, B, I, H)
y, hn, cn = run(T, B, I, H, 1, w)
w_ih, w_hh, b, x, h0, c0 = [list(a) for a in w]


def sig(v):
    return 1 / (1 + math.exp(-v))


h = [h0[k * H:(k + 1) * H] for k in range(B)]
c = [c0[k * H:(k + 1) * H] for k in range(B)]
err = 0.0
for t in range(T):
    for k in range(B):
        xt = x[(t * B + k) * I:(t * B + k + 1) * I]
        g = [b[r] + sum(w_ih[r * I + j] * xt[j] for j in range(I))
             + sum(w_hh[r * H + j] * h[k][j] for j in range(H)) for r in range(4 * H)]
        c[k] = [sig(g[H + j]) * c[k][j] + sig(g[j]) * math.tanh(g[2 * H + j]) for j in range(H)]
        h[k] = [sig(g[3 * H + j]) * math.tanh(c[k][j]) for j in range(H)]
        err = max(err, max(abs(y[(t * B + k) * H + j] - h[k][j]) for j in range(H)))
print(f"max |y - plain-Python reference| = {err:.2e}")
assert err < 1e-5, err

# Two threads: the kernel's pool starts its worker with pthread_create.
T, B, I, H = 8, 64, 128, 256
w = problem(T, B, I, H)
one = run(T, B, I, H, 1, w)
tasks0 = len(os.listdir("/proc/self/task"))
two = run(T, B, I, H, 2, w)
tasks1 = len(os.listdir("/proc/self/task"))
print(f"threads in the process: {tasks0} -> {tasks1}; 1 and 2 threads identical: {one == two}")
assert one == two, "1 and 2 threads differ"
assert tasks1 > tasks0, "no pool thread was started"
print("OK")
