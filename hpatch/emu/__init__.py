"""An emulated Windows process: address space, PE loader, execution on Unicorn."""

from hpatch.emu.cpu import Thread, ThreadState
from hpatch.emu.loader import Module
from hpatch.emu.memory import AddressSpace, Protection
from hpatch.emu.process import Process

__all__ = ["AddressSpace", "Module", "Process", "Protection", "Thread", "ThreadState"]
