"""Thin wrapper around llvm-objdump plus padding recognisers (standard library only)."""

import re
import subprocess

from pecoff import MACHINE_AMD64, MACHINE_ARM64

LINE_RE = re.compile(r"^\s*([0-9a-f]+):\s+((?:[0-9a-f]{2,8} )*[0-9a-f]{2,8})\s*\t?(.*)$")


def objdump(path, start=None, stop=None):
    """Returns {va: (length, text)} for the instructions llvm-objdump decodes.
    Decoding restarts at every symbol of the image's symbol table."""
    cmd = ["llvm-objdump", "-d", "--section=.text", "--no-leading-headers"]
    if start is not None:
        cmd.append("--start-address=0x%x" % start)
    if stop is not None:
        cmd.append("--stop-address=0x%x" % stop)
    cmd.append(path)
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE,
                         universal_newlines=True).stdout
    insns = {}
    for line in out.splitlines():
        m = LINE_RE.match(line)
        if not m:
            continue
        va = int(m.group(1), 16)
        length = sum(len(g) // 2 for g in m.group(2).split())
        insns[va] = (length, m.group(3).strip())
    return insns


# --- padding ----------------------------------------------------------------

def _x86_nop_len(b, i):
    """Length of a padding instruction at b[i] (int3, nop, multi-byte nop,
    or a single zero byte), or 0."""
    c = b[i]
    if c in (0xCC, 0x90, 0x00):
        return 1
    j = i
    while j < len(b) and b[j] == 0x66 and j - i < 14:
        j += 1
    if j < len(b) and b[j] == 0x90 and j > i:
        return j + 1 - i                       # 66 90 (xchg ax,ax)
    if j < len(b) and b[j] == 0x2E:
        j += 1
    if j + 2 < len(b) + 1 and b[j:j + 2] == b"\x0f\x1f" and j + 2 < len(b):
        modrm = b[j + 2]
        tail = {0x00: 0, 0x40: 1, 0x44: 2, 0x80: 4, 0x84: 5}.get(modrm)
        if tail is None:
            return 0
        end = j + 3 + tail
        if end > len(b) or any(b[j + 3:end]):
            # SIB byte (0x00) and displacement must be zero
            return 0
        return end - i
    return 0


ARM64_PAD_WORDS = {0x00000000, 0xD503201F}   # zero fill, nop


def padding_kinds(machine, data):
    """Splits data into padding tokens. Returns a list of token bytes, or None
    if data is not entirely padding."""
    toks = []
    if machine == MACHINE_AMD64:
        i = 0
        while i < len(data):
            n = _x86_nop_len(data, i)
            if not n:
                return None
            toks.append(bytes(data[i:i + n]))
            i += n
        return toks
    if machine == MACHINE_ARM64:
        if len(data) % 4:
            return None
        for i in range(0, len(data), 4):
            w = int.from_bytes(data[i:i + 4], "little")
            if w not in ARM64_PAD_WORDS:
                return None
            toks.append(bytes(data[i:i + 4]))
        return toks
    raise ValueError("unsupported machine 0x%x" % machine)


def is_padding(machine, data):
    return padding_kinds(machine, data) is not None


def describe_padding(machine, data):
    """Short human description, e.g. 'cc' or '90/0f1f..'."""
    toks = padding_kinds(machine, data)
    if toks is None:
        return None
    kinds = []
    for t in toks:
        if machine == MACHINE_AMD64:
            k = t.hex() if len(t) == 1 else "nop%d" % len(t)
        else:
            k = t[::-1].hex()
        if k not in kinds:
            kinds.append(k)
    return "+".join(kinds)


def trim_padding(path, machine, start, stop):
    """End address of the last instruction in [start, stop) that is not padding."""
    from pecoff import PE  # local import keeps the module light
    insns = objdump(path, start, stop)
    pe = PE(path)
    va = start
    last_code_end = start
    while va < stop:
        if va not in insns:
            raise ValueError("no instruction decoded at 0x%x" % va)
        n = insns[va][0]
        raw = pe.read(va - pe.image_base, n)
        if not is_padding(machine, raw):
            last_code_end = va + n
        va += n
    return last_code_end


TERMINATORS_X86 = re.compile(r"^(ret|retq|jmp|jmpq|ud2|int3)\b")
TERMINATORS_ARM64 = re.compile(r"^(ret|b|br|brk|udf)\b")


def is_terminator(machine, text):
    if machine == MACHINE_AMD64:
        return bool(TERMINATORS_X86.match(text))
    return bool(TERMINATORS_ARM64.match(text))
