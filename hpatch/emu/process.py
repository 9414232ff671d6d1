"""An emulated Windows process: address space, CPU, loaded modules, host imports, calls."""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hpatch.arch import Machine
from hpatch.emu.cpu import Cpu, HostCall, Thread, ThreadState
from hpatch.emu.loader import Module, export_forwarder, export_rva, map_image
from hpatch.emu.machine import arch_of
from hpatch.emu.memory import PAGE_SIZE, AddressSpace, Protection, Region
from hpatch.emu.startup import Startup
from hpatch.emu.tables import FunctionTables, read_entries
from hpatch.emu.tls import StaticTls, tls_callbacks, tls_directory
from hpatch.errors import AddressSpaceError, EmulationFault, HostFault, HPatchError
from hpatch.image import PEImage, load_image
from hpatch.image.model import Import

_STUB_SIZE = 16
_STUB_REGION_SIZE = 0x10000
_MAX_FORWARDS = 8
_DLL_PROCESS_ATTACH = 1
_MAX_ARGUMENT_BUFFER = 1 << 24
#: Addresses whose descriptions are kept at most.
_DESCRIBED = 4096


@dataclass(frozen=True, slots=True)
class ImportKey:
    """An import as a DLL exports it: by name, or by ordinal when ``name`` is None."""

    dll: str
    name: str | None
    ordinal: int | None

    @classmethod
    def of(cls, dll: str, symbol: str | int) -> ImportKey:
        if isinstance(symbol, int):
            return cls(dll.lower(), None, symbol)
        return cls(dll.lower(), symbol, None)

    def __str__(self) -> str:
        return f"{self.dll}!{self.name if self.name is not None else f'#{self.ordinal}'}"


class Process:
    """One emulated process of ``machine``.

    Imports resolve, in order, to a host function registered with ``host``, to a
    module already loaded, to a DLL found in ``search_path`` (the loaded image's own
    directory first, as Windows searches), given ``unmodelled``, to the host function
    it returns for that import, to the modelled start-up surface of Windows and its C
    runtimes (``hpatch.emu.startup``), and otherwise to a stub that stops the call with
    a fault naming the import.
    """

    def __init__(
        self,
        machine: Machine,
        *,
        search_path: Sequence[str | os.PathLike[str]] = (),
        unmodelled: Callable[[ImportKey], HostCall] | None = None,
    ) -> None:
        self.machine = Machine(machine)
        self.space = AddressSpace()
        self.cpu = Cpu(self.machine, self.space)
        self.cpu.describe = self.describe
        self.modules: list[Module] = []
        #: The first image loaded on request (not as a dependency): calls by name and
        #: by RVA go to it unless told otherwise.
        self.main_module: Module | None = None
        self.search_path = [Path(p) for p in search_path]
        self.host_functions: dict[ImportKey, HostCall] = {}
        self.unmodelled = unmodelled
        self.function_tables = FunctionTables()
        self.startup = Startup(self)
        self.tls = StaticTls(self.space)
        self.main_thread = self.cpu.new_thread()
        self._stubs: dict[ImportKey, int] = {}
        self._stub_imports: dict[int, ImportKey] = {}
        self._stub_region: Region | None = None
        self._stub_used = 0
        self._loading: list[Path] = []
        self._directories: dict[Module, Path | None] = {}
        self._named: dict[Module, list[tuple[int, str]]] = {}  # describe()'s names, sorted
        #: describe()'s answers for addresses in modules, until the modules change: the
        #: calls of a function that fault mostly fault at the same few instructions.
        self._described: dict[int, str] = {}
        self._depth = 0

    # imports ----------------------------------------------------------------------
    def host(self, dll: str, symbol: str | int, call: HostCall) -> None:
        """Serve ``dll!symbol`` (a name, or an ordinal) with a Python function: imports
        bound from now on, and those already bound to a stub (an import nothing modelled,
        a modelled start-up function, or an earlier host function). Imports bound to a
        loaded DLL stay with it."""
        key = ImportKey.of(dll, symbol)
        self.host_functions[key] = call
        if key in self._stubs:
            # Stubs are shared by key: later images would get the old call otherwise.
            self.cpu.add_host_stub(self._stubs[key], str(key), call)

    def _stub(self, key: ImportKey, call: HostCall) -> int:
        if key in self._stubs:
            return self._stubs[key]
        if self._stub_region is None or self._stub_used + _STUB_SIZE > self._stub_region.size:
            region = self.space.allocate(_STUB_REGION_SIZE, Protection.RW, "host stubs")
            fill = arch_of(self.machine).trap_instruction
            region.view[:] = fill * (region.size // len(fill))
            self.space.protect(region.va, region.size, Protection.RX)
            self.cpu.watch_stubs(region)
            self._stub_region, self._stub_used = region, 0
            if self.cpu.continuation_va is None:
                # The first slot is where host functions' calls into emulated code return.
                self.space.poke(region.va, arch_of(self.machine).return_instruction)
                self.cpu.set_continuation(region.va)
                self._stub_used = _STUB_SIZE
        va = self._stub_region.va + self._stub_used
        self._stub_used += _STUB_SIZE
        self.space.poke(va, arch_of(self.machine).return_instruction)
        self.cpu.add_host_stub(va, str(key), call)
        self._stubs[key] = va
        self._stub_imports[va] = key
        return va

    def import_at(self, va: int) -> ImportKey | None:
        """The import whose host stub is at ``va``, if one is."""
        return self._stub_imports.get(va)

    def _resolve(self, entry: Import, directory: Path | None) -> int:
        key = ImportKey(entry.dll.lower(), entry.name, None if entry.name else entry.ordinal)
        return self._resolve_key(key, directory)

    def _resolve_key(self, key: ImportKey, directory: Path | None) -> int:
        va = self._lookup(key, directory, 0, load=True)
        if va is not None:
            return va

        def unmodelled(cpu: Cpu, arguments: tuple[int, ...]) -> int:
            raise HostFault(f"call to {key}, which nothing in this process models")

        return self._stub(key, unmodelled)

    def _lookup(self, key: ImportKey, directory: Path | None, depth: int, load: bool) -> int | None:
        """The VA ``key`` binds to: a host function, a loaded module's export (forwarders
        followed), a DLL found beside the image or on the search path (loaded for it), or
        the ``unmodelled`` handler; None when nothing serves it. Without ``load`` nothing
        changes: a DLL not loaded yet is read, not mapped, and what would serve the import
        is 0 (a stub is not made either)."""
        call = self.host_functions.get(key)
        if call is not None:
            return self._stub(key, call) if load else 0
        module = self.module(key.dll)
        image = module.image if module is not None else None
        if module is None:
            found = self._find_dll(key.dll, directory)
            if found is not None and found not in self._loading:
                if load:
                    module = self.load_image(found)
                    image = module.image
                else:
                    image = load_image(found)
        if image is not None:
            rva = export_rva(image, key.name, key.ordinal)
            if rva is not None:
                return module.va(rva) if module is not None else 0
            forwarder = export_forwarder(image, key.name, key.ordinal)
            if forwarder and "." in forwarder and depth < _MAX_FORWARDS:
                dll, _, symbol = forwarder.partition(".")
                target = (
                    ImportKey(f"{dll.lower()}.dll", None, int(symbol[1:]))
                    if symbol.startswith("#") and symbol[1:].isdigit()
                    else ImportKey(f"{dll.lower()}.dll", symbol, None)
                )
                return self._lookup(target, directory, depth + 1, load)
        if self.unmodelled is not None:
            return self._stub(key, self.unmodelled(key)) if load else 0
        modelled = self.startup.host_call(key)
        if modelled is not None:
            return self._stub(key, modelled) if load else 0
        return None

    def import_address(
        self, dll: str, symbol: str | int, *, beside: Module | None = None, load: bool = True
    ) -> int | None:
        """Where an import of ``dll!symbol`` (a name, or an ordinal) binds in this process,
        as ``load_image`` binds an image's imports (a DLL searched for beside ``beside``'s
        image first), or None when nothing serves it, where an image's own import would
        get a stub that faults naming it. ``load=False`` only asks: nothing is loaded or
        made, and an import that would bind gives 0."""
        directory = self._directories.get(beside) if beside is not None else None
        return self._lookup(ImportKey.of(dll, symbol), directory, 0, load)

    def unload(self, module: Module) -> None:
        """Take a module out of the process (its pages, unwind table and name), without
        calling its entry point: what undoing a load that nothing has used yet needs."""
        self.modules.remove(module)
        self._described.clear()
        self._directories.pop(module, None)
        self.function_tables.remove(module)
        self.tls.remove(module)
        self.space.unmap(module.base)
        if self.main_module is module:
            self.main_module = None

    def _find_dll(self, dll: str, directory: Path | None) -> Path | None:
        for folder in ([directory] if directory else []) + self.search_path:
            if folder is None or not folder.is_dir():
                continue
            for candidate in folder.iterdir():
                if candidate.name.lower() == dll and candidate.is_file():
                    return candidate
        return None

    # modules ----------------------------------------------------------------------
    def load_image(
        self,
        source: str | os.PathLike[str] | PEImage,
        *,
        base: int | None = None,
        name: str | None = None,
        run_entry_point: bool = True,
    ) -> Module:
        """Map an image (a path or a parsed PEImage) and the DLLs it imports, set up its
        static TLS, then call its TLS callbacks and its entry point with
        DLL_PROCESS_ATTACH (without ``run_entry_point``, neither), dependencies first.

        ``base`` loads it there instead of its preferred base (base relocations
        applied); a preferred base already in use moves the image as Windows would.
        """
        path = None if isinstance(source, PEImage) else Path(source)
        image = source if isinstance(source, PEImage) else load_image(source)
        if image.identity.machine != self.machine:
            raise HPatchError(
                f"{image.name} is a {image.identity.machine.name} image; this process is "
                f"{self.machine.name}"
            )
        name = name or image.name
        if self.module(name) is not None:
            raise HPatchError(f"a module named {name} is loaded already")
        if base is None and not self.space.is_free(image.image_base, image.size_of_image):
            base = self.space.find_free(image.size_of_image, alignment=0x10000)
            if base is None:
                raise AddressSpaceError(f"no room for {name}")
        directory = path.parent if path is not None else None
        top_level = self._depth == 0
        self._depth += 1
        if path is not None:
            self._loading.append(path)
        try:
            module = map_image(
                self.space,
                image,
                lambda entry: self._resolve(entry, directory),
                base=base,
                name=name,
            )
        finally:
            self._depth -= 1
            if path is not None:
                self._loading.remove(path)
        self.modules.append(module)
        self._described.clear()
        self._directories[module] = directory
        self._register_pdata(module)
        if self.main_module is None and top_level:
            self.main_module = module
        tls = tls_directory(self.space, module)
        if tls is not None:
            self.tls.add(module, tls, [thread.teb.va for thread in self.cpu.threads])
        if run_entry_point:
            # As the Windows loader does: the TLS callbacks, then the entry point.
            for callback in tls_callbacks(self.space, tls) if tls is not None else []:
                self._attach(module, callback, "a TLS callback")
            if image.entry_rva:
                self._attach(module, module.va(image.entry_rva), "the entry point")
        return module

    def _attach(self, module: Module, va: int, what: str) -> None:
        """Call ``va`` with DLL_PROCESS_ATTACH; a fault names ``what`` of the module."""
        try:
            self.call(va, module.base, _DLL_PROCESS_ATTACH, 0)
        except EmulationFault as fault:
            raise EmulationFault(
                f"{what} of {module.name} faulted: {fault}",
                address=fault.address,
                access=fault.access,
                pc=fault.pc,
            ) from fault

    def _register_pdata(self, module: Module) -> None:
        image = module.image
        rva, size = image.exception_directory
        if not rva or not size:
            return
        ends = {entry.begin_rva: entry.end_rva for entry in image.unwind_entries}
        entry_size = arch_of(self.machine).pdata_entry_size
        entries = read_entries(
            self.machine,
            self.space.read,
            module.base,
            module.va(rva),
            size // entry_size,
            lambda begin, word: ends.get(begin, begin),
        )
        self.function_tables.add(module, entries)

    def module(self, name: str) -> Module | None:
        for module in self.modules:
            if module.name.lower() == name.lower():
                return module
        return None

    def module_pages(self, module: Module) -> list[tuple[int, Protection, bytes]]:
        """(index, protection, bytes) of every page of ``module`` that is not writable:
        what patching changes and a rollback must restore exactly."""
        return [
            (
                index,
                protection,
                bytes(module.region.view[index * PAGE_SIZE : (index + 1) * PAGE_SIZE]),
            )
            for index, protection in enumerate(module.region.protections)
            if not protection & Protection.W
        ]

    def module_at(self, va: int) -> Module | None:
        for module in self.modules:
            if module.contains(va):
                return module
        return None

    def function_va(self, function: str | int, module: Module | None = None) -> int:
        """The VA of an exported function (by name) or of an RVA of ``module`` (the first
        loaded module by default)."""
        module = module or self.main_module
        if module is None:
            raise HPatchError("no image is loaded")
        if isinstance(function, int):
            if not 0 <= function < module.image.size_of_image:
                raise HPatchError(f"RVA 0x{function:x} is outside {module.name}")
            return module.va(function)
        rva = module.export_rva(function)
        if rva is None:
            for symbol in module.image.symbols:
                if symbol.name == function and symbol.is_function:
                    rva = symbol.rva
                    break
        if rva is None:
            raise HPatchError(f"{module.name} has no function named {function}")
        return module.va(rva)

    def describe(self, va: int) -> str:
        """``module!symbol+0xoffset`` for an address, as far as names are known."""
        described = self._described.get(va)
        if described is not None:
            return described
        module = self.module_at(va)
        if module is None:
            region = self.space.region_at(va)
            return f"{region.name}+0x{va - region.va:x}" if region else f"0x{va:x}"
        rva = va - module.base
        named = self._named.get(module)
        if named is None:
            # Made once per module: every fault of every emulated call is described.
            named = self._named[module] = sorted(
                [(e.rva, e.name) for e in module.image.exports if e.name and e.forwarder is None]
                + [(s.rva, s.name) for s in module.image.symbols if s.is_function]
            )
        index = bisect.bisect_right(named, (rva, "\U0010ffff")) - 1
        if index >= 0 and rva - named[index][0] < 0x10000:
            start, symbol = named[index]
            described = f"{module.name}!{symbol}+0x{rva - start:x}"
        else:
            described = f"{module.name}+0x{rva:x}"
        if len(self._described) >= _DESCRIBED:
            self._described.clear()
        self._described[va] = described
        return described

    # memory for calls ---------------------------------------------------------------
    def buffer(self, content: bytes | int, name: str = "buffer") -> int:
        """A scratch buffer (its bytes, or that many zero bytes) ending right at a guard
        page, so the first byte past its end faults; returns its VA."""
        data = bytes(content)  # an int gives that many zero bytes
        size = max(len(data), 1)
        pages = (size + PAGE_SIZE - 1) // PAGE_SIZE
        region = self.space.allocate(pages * PAGE_SIZE, Protection.RW, name, guard=True)
        va = region.end - len(data)
        region.view[va - region.va :] = data
        return va

    def argument(self, value: int | str) -> int:
        """An integer argument as it is passed: integers (and their text, any base)
        as given; ``bytes:HEX`` copied into a fresh buffer and ``buffer:N`` (N zero
        bytes) allocated, both ending at a guard page, their address passed."""
        if isinstance(value, int):
            return value
        if value.startswith("bytes:"):
            try:
                return self.buffer(bytes.fromhex(value[6:]), "argument")
            except ValueError:
                raise HPatchError(f"'{value}': bytes: takes hexadecimal digits") from None
        if value.startswith("buffer:"):
            size = self.argument(value[7:])
            if not 0 <= size <= _MAX_ARGUMENT_BUFFER:
                raise HPatchError(f"'{value}': a buffer holds 0 to 16 MiB")
            return self.buffer(size, "argument")
        try:
            return int(value, 0)
        except ValueError:
            raise HPatchError(f"'{value}' is not an integer (nor bytes:HEX / buffer:N)") from None

    def free(self, va: int) -> None:
        """Release a buffer from ``buffer``."""
        region = self.space.region_at(va)
        if region is None or region.guards == ():
            # An empty buffer's VA is the end of its region, the guard page above.
            region = self.space.region_at(va - 1)
        if region is None or region.guards == ():
            raise HPatchError(f"0x{va:x} is not a scratch buffer")
        self.space.unmap(region.va)

    # calls --------------------------------------------------------------------------
    def call(
        self,
        function: str | int,
        *arguments: int,
        module: Module | None = None,
        thread: Thread | None = None,
        steps: int | None = None,
    ) -> int:
        """Call a function (an export name, an RVA of ``module``, or a VA when no module
        holds it as an RVA) with integer arguments; return its integer result, or raise
        EmulationFault naming the address, access and function."""
        if isinstance(function, int) and (
            self.module_at(function) is not None or not self._holds_rva(function, module)
        ):
            va = function
        else:
            va = self.function_va(function, module)
        thread = thread or self.main_thread
        self.cpu.start(thread, va, arguments)
        try:
            state = self.cpu.run(thread, steps)
        finally:
            # However the call ends, the thread is free for the next one.
            fault, result = thread.fault, thread.result
            self.cpu.finish(thread)
        if state == ThreadState.STOPPED:
            raise HPatchError(
                f"the call to {self.describe(va)} did not return within {steps} steps"
            )
        if fault is not None:
            raise fault
        assert result is not None
        return result

    def _holds_rva(self, value: int, module: Module | None) -> bool:
        """Whether ``value`` is an RVA inside ``module`` (the main module by default)."""
        module = module or self.main_module
        return module is not None and 0 <= value < module.image.size_of_image

    def new_thread(self) -> Thread:
        """A new thread, with its block of every loaded image's static TLS."""
        thread = self.cpu.new_thread()
        self.tls.thread_created(thread.teb.va)
        return thread
