"""The compiler's code pages are handed back after warm-up, and read again when needed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from service.code_pages import library_mappings, resident_kib

ROOT = Path(__file__).parents[2]


def test_library_mappings_lists_the_file_only_maps_under_a_directory(tmp_path):
    lib = "/opt/lib/jaxlib/libjax_common.so"
    entries = [
        ("7f0000000000-7f0000002000 r--p 00000000 fd:00 1 " + lib, 0),
        ("7f0000002000-7f0000010000 r-xp 00002000 fd:00 1 " + lib, 0),
        ("7f0000010000-7f0000011000 r--p 00010000 fd:00 1 " + lib, 4),  # relocated: copied
        ("7f0000011000-7f0000012000 rw-p 00011000 fd:00 1 " + lib, 0),  # writable
        ("7f0000020000-7f0000021000 r-xp 00000000 fd:00 2 /opt/lib/other/libother.so", 0),
        ("7f0000030000-7f0000031000 rw-p 00000000 00:00 0 ", 4),
    ]
    smaps = tmp_path / "smaps"
    smaps.write_text(
        "".join(
            f"{head}\nSize: 8 kB\nRss: 8 kB\nAnonymous: {anon} kB\nVmFlags: rd mr\n"
            for head, anon in entries
        )
    )
    directory = Path("/opt/lib/jaxlib")
    assert library_mappings(directory, str(smaps)) == [
        (0x7F0000000000, 0x2000),
        (0x7F0000002000, 0xE000),
    ]
    assert resident_kib(directory, str(smaps)) == 4 * 8
    assert library_mappings(directory, str(tmp_path / "absent")) == []
    assert resident_kib(directory, str(tmp_path / "absent")) == 0


SCRIPT = textwrap.dedent(
    """
    import json, re
    from pathlib import Path
    import jax, jax.numpy as jnp, jaxlib
    from service.code_pages import release_compiler_code

    def jaxlib_kib():
        # resident KiB of jaxlib's files, and of them the pages no other process maps
        prefix, current = str(Path(jaxlib.__file__).parent.resolve()), ""
        total = {"Rss:": 0, "Private_Clean:": 0}
        for line in open("/proc/self/smaps"):
            head = line.split()
            if re.match(r"^[0-9a-f]+-[0-9a-f]+$", head[0]):
                current = head[5] if len(head) > 5 else ""
            elif head[0] in total and current.startswith(prefix):
                total[head[0]] += int(head[1])
        return total["Rss:"], total["Private_Clean:"]

    f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
    f(jnp.ones((64, 64))).block_until_ready()  # a compile reads the compiler's code in
    before = jaxlib_kib()
    released = release_compiler_code()
    after = jaxlib_kib()
    value = float(jax.jit(lambda x: jnp.cos(x).sum())(jnp.ones(8)))  # compiles again: fine
    print(json.dumps({"before": before, "after": after, "released": released, "value": value}))
    """
)


def test_release_hands_back_jaxlibs_pages_and_compiling_still_works():
    # Unmapped from this process whether or not another process (this test run's own jax,
    # other workers) maps them too.
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    (rss_before, _), (rss_after, private_after) = got["before"], got["after"]
    assert rss_before > 40_000  # KiB: the compiler's code, read in by the compile
    assert rss_after < rss_before / 4
    assert private_after <= 2_048
    assert got["released"] == rss_before - rss_after
    assert abs(got["value"] - 8 * 0.5403023) < 1e-4
