"""Generate a C library of N functions in two versions, and build both as x64 DLLs.

    python bench/gen_sample.py N OUT_DIR [--old-only]   (needs clang and lld-link)

Functions call each other (a few callees each), read and write globals, and branch;
version B changes one function in a hundred. The output is OUT_DIR/old.dll and
OUT_DIR/new.dll (only old.dll with --old-only), built like the samples' x64 clang
build. clang and lld-link are taken unversioned if installed, else as Debian's
clang-19 and lld-link-19.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path


def tool(name: str) -> str:
    """``name``, or Debian's versioned name for it."""
    return name if shutil.which(name) else f"{name}-19"


def source(count: int, changed: set[int]) -> str:
    rng = random.Random(count)
    lines = ["typedef unsigned int u32;", "u32 g_state[64];", "const u32 k_table[16] = {"]
    lines.append(", ".join(str(rng.randrange(1 << 30)) for _ in range(16)) + "};")
    for index in range(count):
        lines.append(f"__declspec(noinline) u32 f{index}(u32 x, u32 y);")
    for index in range(count):
        callees = [rng.randrange(index) for _ in range(min(index, 3))]
        body = [f"    u32 r = x * {rng.randrange(3, 97)}u + y;"]
        body.append(f"    if (r & {1 << rng.randrange(8)}u) r ^= k_table[{rng.randrange(16)}];")
        body.append(f"    g_state[{index % 64}] += r;")
        for callee in callees:
            body.append(f"    if (y > {rng.randrange(100)}u) r += f{callee}(r, y - 1);")
        if index in changed:
            body.append("    r = (r << 3) | (r >> 29);  /* the change */")
        body.append("    return r;")
        lines.append(
            f"__declspec(noinline) u32 f{index}(u32 x, u32 y)\n{{\n" + "\n".join(body) + "\n}"
        )
    lines.append(f"__declspec(dllexport) u32 entry(u32 x) {{ return f{count - 1}(x, 3); }}")
    lines.append("int __stdcall DllMain(void *a, unsigned b, void *c)")
    lines.append("{ (void)a; (void)b; (void)c; return 1; }")
    return "\n".join(lines) + "\n"


def build(c_file: Path, dll: Path) -> None:
    obj = c_file.with_suffix(".obj")
    subprocess.run(
        [
            tool("clang"),
            "--target=x86_64-pc-windows-msvc",
            "-O2",
            "-ffreestanding",
            "-fno-stack-protector",
            "-fasynchronous-unwind-tables",
            "-c",
            str(c_file),
            "-o",
            str(obj),
        ],
        check=True,
    )
    subprocess.run(
        [
            tool("lld-link"),
            "/nologo",
            "/dll",
            "/nodefaultlib",
            "/entry:DllMain",
            "/machine:x64",
            "/brepro",
            "/opt:ref",
            "/opt:noicf",
            f"/out:{dll}",
            str(obj),
        ],
        check=True,
    )


def main() -> None:
    count, out = int(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    changed = set(random.Random(count + 1).sample(range(count), max(1, count // 100)))
    versions = (("old", set()), ("new", changed))
    for name, edits in versions[:1] if "--old-only" in sys.argv[3:] else versions:
        c_file = out / f"{name}.c"
        c_file.write_text(source(count, edits))
        build(c_file, out / f"{name}.dll")


if __name__ == "__main__":
    main()
