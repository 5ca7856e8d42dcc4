"""The extension needs no glibc newer than 2.17 (the wheel's manylinux_2_17 tag, issue 20).

Built on glibc >= 2.34, the pthread/dl functions that moved into libc.so.6 are pinned to
their old versions (csrc/glibc_compat.h); a new call of another such function, or of one
newer than 2.17, shows up here in any build, not only in tools/build_wheel.sh.
"""
import os
import platform
import re
import shutil
import subprocess

import pytest

ck = pytest.importorskip("lstm_fast.backends._c")

GLIBC_MAX = (2, 17)


def _versions(path):
    out = subprocess.run(["objdump", "-T", path], capture_output=True, text=True, check=True).stdout
    need = {}
    for m in re.finditer(r"\(?(GLIBC_[0-9.]+)\)?\s+(\S+)$", out, re.M):
        need.setdefault(m.group(1), set()).add(m.group(2))
    return need


@pytest.mark.skipif(platform.system() != "Linux" or platform.machine() != "x86_64"
                    or not platform.libc_ver()[0] == "glibc", reason="x86-64 glibc only")
@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) not installed")
def test_extension_needs_no_glibc_newer_than_2_17():
    if "-fsanitize" in (ck.build_info()["flags"] or ""):
        pytest.skip("sanitizer build: built without the glibc pins")
    need = _versions(ck.__file__)
    assert need, f"no versioned glibc symbol found in {ck.__file__}"
    too_new = {v: sorted(s) for v, s in need.items()
               if tuple(int(x) for x in v[len("GLIBC_"):].split("."))[:2] > GLIBC_MAX}
    assert not too_new, (f"{os.path.basename(ck.__file__)} needs glibc newer than 2.17: {too_new}; "
                         "pin them in csrc/glibc_compat.h")
