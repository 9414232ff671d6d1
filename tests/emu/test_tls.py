"""Static TLS as the loader sets it up (hpatch/emu/tls.py): an index per image, a block
per thread reached through the TEB the way compiled code reaches it, on both machines.
The corpus test (tests/cves/test_entry_points.py) loads mingw DLLs whose TLS callbacks
run before their entry points."""

from __future__ import annotations

import pytest

from hpatch.arch import Machine
from hpatch.emu.tls import TEB_TLS_POINTER, TlsDirectory, tls_directory

from .test_process import BUILDS, code_page, machine, new_process, sample

#: Load the 4 bytes at offset 4 of the block of TLS index 1: the sequence a compiler
#: emits for a thread-local variable, with the index known.
_READ_TLS = {
    Machine.AMD64: "mov rax, gs:[0x58]; mov rax, [rax + 8]; mov eax, [rax + 4]; ret",
    Machine.ARM64: "ldr x0, [x18, #0x58]; ldr x0, [x0, #8]; ldr w0, [x0, #4]; ret",
}


@pytest.mark.parametrize("build", BUILDS)
def test_every_thread_reads_its_own_copy_of_the_template(build: str) -> None:
    process = new_process(build, "v1")
    module = process.main_module
    assert module is not None and tls_directory(process.space, module) is None
    template = process.buffer(b"\x01\x02\x03\x04\x2a\x00\x00\x00")
    index = process.buffer(8)
    first = TlsDirectory(template, 4, index, 0, 0)
    second = TlsDirectory(template, 8, index + 4, 0, 16)  # 16 zero bytes after the 8
    assert process.tls.add(module, first, [t.teb.va for t in process.cpu.threads]) == 0
    assert process.tls.add(module, second, [t.teb.va for t in process.cpu.threads]) == 1
    assert process.space.read(index, 8) == bytes.fromhex("0000000001000000")  # the indexes
    code = code_page(process, _READ_TLS[machine(build)])
    assert process.call(code) == 0x2A
    other = process.new_thread()
    array = process.space.read_u64(other.teb.va + TEB_TLS_POINTER)
    block = process.space.read_u64(array + 8)
    assert process.space.read(block, 24) == bytes.fromhex("010203042a000000") + bytes(16)
    process.space.write(block + 4, b"\x07\x00\x00\x00")  # this thread's copy only
    assert process.call(code, thread=other) == 7
    assert process.call(code) == 0x2A


@pytest.mark.parametrize("build", BUILDS)
def test_an_unloaded_image_gives_new_threads_no_block(build: str) -> None:
    process = new_process(build, "v1")
    module = process.load_image(sample(build, "v3"), name="v3.dll")
    template = process.buffer(b"\x2a\x00\x00\x00")
    index = process.buffer(4)
    process.tls.add(module, TlsDirectory(template, 4, index, 0, 0), [])
    process.free(template)  # the template goes as the image's pages would
    process.unload(module)
    thread = process.new_thread()  # no block copied from an unmapped template
    array = process.space.read_u64(thread.teb.va + TEB_TLS_POINTER)
    assert array == 0
