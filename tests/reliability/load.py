"""Patching under load: emulated threads loop calling the functions a package replaces
(and functions that call them) on known inputs while the image is patched, patched
again and rolled back under them.

Each trial runs every thread a random number of instructions (so each stops at an
arbitrary instruction boundary, often inside code about to change), then applies,
replaces or rolls back a package (waiting for busy threads, or refusing at once and
trying again next trial), and resumes them. Every call that returns is checked against
the results the old and new builds give for its input, computed beforehand in
processes running those builds: it must equal the result of one of the versions the
image ran while the call was in flight. A fault of any thread is a crash.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field
from functools import cache

from hpatch.apply import ApplyOptions, apply_package, rollback
from hpatch.emu import Process, ThreadState
from hpatch.emu.cpu import Thread
from hpatch.errors import ApplyError, EmulationFault

from .samples import package, process, snapshot

_PAD = bytes(range(0x40, 0x60))  # what lies after an input: bug D reads past its end


def _tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + len(value).to_bytes(2, "little") + value


_NESTED = (
    _tlv(1, b"abc")
    + _tlv(0x81, _tlv(2, b"de") + _tlv(0x82, _tlv(3, (7).to_bytes(4, "little"))))
    + _tlv(4, (0x1234).to_bytes(2, "little"))
)
_OVERRUN = bytes.fromhex("8105000110004142")  # bug D: a leaf longer than its container
_ARRAY = bytes.fromhex("02000000040000004142434445464748")


def _packet(payload: bytes) -> bytes:
    """An hp_pkt_build packet (flags 0): 'HP', version 1, flags, length, 0, CRC-32."""
    return (
        b"HP\x01\x00"
        + len(payload).to_bytes(2, "little")
        + bytes(2)
        + zlib.crc32(payload).to_bytes(4, "little")
        + payload
    )


#: (function, arguments): an int, ("in", bytes) for an input buffer (followed by _PAD),
#: ("out", n) for an n-byte output buffer whose bytes are part of the result. Chosen so
#: that no version faults, and most give different results in v1, v2 and v3.
CALLS: tuple[tuple[str, tuple[object, ...]], ...] = (
    ("hp_version", ()),
    ("hp_tlv_parse", (("in", _OVERRUN), 8, ("out", 20))),
    ("hp_tlv_parse", (("in", _NESTED), len(_NESTED), ("out", 20))),
    ("hp_tlv_copy_string", (("in", bytes.fromhex("02040041424344")), 7, 2, ("out", 8), 4)),
    ("hp_json_escape", (("in", b"\x01"), 1, ("out", 8), 4)),
    ("hp_json_escape", (("in", b'a"b\\c\n\x02'), 7, ("out", 32), 32)),
    ("hp_array_unpack", (("in", _ARRAY), len(_ARRAY), ("out", 16), 16)),
    ("hp_pkt_process", (("in", _packet(_OVERRUN)), 12 + len(_OVERRUN), ("out", 20))),
    ("hp_pkt_process", (("in", _packet(_NESTED)), 12 + len(_NESTED), ("out", 20))),
    ("hp_crc32", (("in", b"123456789"), 9)),
)
VERSIONS = ("v1", "v2", "v3")
Result = tuple[int, bytes]


class _Buffers:
    """One call's buffers in one process: filled afresh before every call."""

    def __init__(self, target: Process, arguments: tuple[object, ...]) -> None:
        self.target = target
        self.values: list[int] = []
        self.inputs: list[tuple[int, bytes]] = []
        self.outputs: list[tuple[int, int]] = []
        for argument in arguments:
            if isinstance(argument, int):
                self.values.append(argument)
                continue
            kind, content = argument  # type: ignore[misc]
            if kind == "in":
                va = target.buffer(content + _PAD, "input")
                self.inputs.append((va, content + _PAD))
            else:
                va = target.buffer(content, "output")
                self.outputs.append((va, content))
            self.values.append(va)

    def fill(self) -> None:
        for va, content in self.inputs:
            self.target.space.write(va, content)
        for va, size in self.outputs:
            self.target.space.write(va, bytes(size))

    def result(self, value: int) -> Result:
        value &= 0xFFFFFFFF
        outputs = b"".join(self.target.space.read(va, size) for va, size in self.outputs)
        return (value - (1 << 32) if value & 0x80000000 else value), outputs


@cache
def expected(build: str) -> dict[str, tuple[Result, ...]]:
    """Every call's result in a process running each build, one straight call each."""
    found = {}
    for version in VERSIONS:
        target = process(build, version)
        results = []
        for function, arguments in CALLS:
            buffers = _Buffers(target, arguments)
            buffers.fill()
            results.append(buffers.result(target.call(function, *buffers.values)))
        found[version] = tuple(results)
    return found


@dataclass
class LoadTally:
    """What the trials of one build did."""

    build: str
    trials: int = 0
    operations: dict[str, int] = field(default_factory=dict)  # done, by kind
    refused_busy: int = 0  # refused by the thread-safety check (tried again later)
    refused_as_expected: int = 0  # rollback attacks refused
    calls: int = 0
    calls_across_changes: int = 0  # calls that ran while the image changed under them
    distinct_results: int = 0  # calls whose versions gave different results
    crashes: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)

    def merge(self, other: LoadTally) -> None:
        self.trials += other.trials
        for kind, count in other.operations.items():
            self.operations[kind] = self.operations.get(kind, 0) + count
        self.refused_busy += other.refused_busy
        self.refused_as_expected += other.refused_as_expected
        self.calls += other.calls
        self.calls_across_changes += other.calls_across_changes
        self.distinct_results += other.distinct_results
        self.crashes += other.crashes
        self.wrong += other.wrong


@dataclass
class _Worker:
    thread: Thread
    buffers: list[_Buffers]
    call: int = 0
    versions: set[str] = field(default_factory=set)


class LoadTest:
    """One process running v1 of ``build``, its threads, and the packages."""

    def __init__(self, build: str, threads: int, seed: str) -> None:
        self.build = build
        self.rng = random.Random(f"{seed}/load/{build}")
        self.expected = expected(build)
        self.target = process(build, "v1")
        self.packages = {"v2": package(build, "v1", "v2", 2), "v3": package(build, "v1", "v3", 3)}
        self.version = "v1"
        self.tally = LoadTally(build)
        self.workers = []
        for _ in range(threads):
            thread = self.target.new_thread()
            buffers = [_Buffers(self.target, arguments) for _, arguments in CALLS]
            worker = _Worker(thread, buffers, call=self.rng.randrange(len(CALLS)))
            self.workers.append(worker)
            self._start(worker)

    def _start(self, worker: _Worker) -> None:
        function, _ = CALLS[worker.call]
        buffers = worker.buffers[worker.call]
        buffers.fill()
        worker.versions = {self.version}
        self.target.cpu.start(worker.thread, self.target.function_va(function), buffers.values)

    def _settle(self, worker: _Worker) -> None:
        """Check a call that ended and start the next one; a stopped call goes on."""
        thread = worker.thread
        if thread.state == ThreadState.STOPPED:
            return
        function, _ = CALLS[worker.call]
        if thread.state == ThreadState.FAULTED:
            self.tally.crashes.append(f"{function} in {sorted(worker.versions)}: {thread.fault}")
        else:
            assert thread.result is not None
            got = worker.buffers[worker.call].result(thread.result)
            allowed = {self.expected[v][worker.call] for v in worker.versions}
            self.tally.calls += 1
            self.tally.calls_across_changes += len(worker.versions) > 1
            self.tally.distinct_results += len(allowed) > 1
            if got not in allowed:
                self.tally.wrong.append(
                    f"{function} (call {worker.call}) in {sorted(worker.versions)} gave {got}, "
                    f"expected one of {sorted(allowed)}"
                )
        self.target.cpu.finish(thread)
        worker.call = self.rng.randrange(len(CALLS))
        self._start(worker)

    def _run_threads(self, most: int) -> None:
        for worker in self.workers:
            steps = self.rng.randrange(most + 1)
            self.target.cpu.run(worker.thread, steps)
            self._settle(worker)

    def _operation(self) -> None:
        options = ApplyOptions(allow_unsigned=True, wait_steps=self.rng.choice((0, 200_000)))
        rng = self.rng
        if self.version == "v1":
            kind, new = rng.choice((("apply", "v2"), ("apply", "v3")))
        elif self.version == "v2":
            kind, new = rng.choice((("replace", "v3"), ("rollback", "v1")))
        else:
            kind, new = "rollback", "v1"
        if self.version == "v3" and rng.random() < 0.1:
            # A rollback attack under load: refused, and nothing moves.
            before = snapshot(self.target)
            try:
                apply_package(self.target, self.packages["v2"], options=options)
            except ApplyError as error:
                assert "anti-rollback" in str(error), error
                assert snapshot(self.target) == before
                self.tally.refused_as_expected += 1
                return
            raise AssertionError("an older package was applied over a newer one")
        try:
            if kind == "rollback":
                rollback(self.target, wait_steps=options.wait_steps)
            else:
                apply_package(self.target, self.packages[new], options=options)
        except ApplyError as error:
            if "thread safety" not in str(error):
                raise
            self.tally.refused_busy += 1
            return
        self.tally.operations[kind] = self.tally.operations.get(kind, 0) + 1
        self.version = new
        for worker in self.workers:
            # Threads the applier ran to their return finished in the old version only.
            self._settle(worker)
            if worker.thread.state == ThreadState.STOPPED:
                worker.versions.add(new)

    def run(self, trials: int, most_steps: int = 400) -> LoadTally:
        for _ in range(trials):
            self._run_threads(most_steps)
            self._operation()
            self.tally.trials += 1
        # Let every call in flight finish, so that it is checked too.
        for worker in self.workers:
            if worker.thread.state == ThreadState.STOPPED:
                self.target.cpu.run(worker.thread)
            thread = worker.thread
            if thread.state == ThreadState.FAULTED:
                self.tally.crashes.append(f"{CALLS[worker.call][0]}: {thread.fault}")
        return self.tally


def run_trials(build: str, trials: int, seed: str, threads: int = 4) -> LoadTally:
    """``trials`` operations on one process of ``build`` under ``threads`` busy threads."""
    try:
        return LoadTest(build, threads, seed).run(trials)
    except EmulationFault as fault:  # a call outside a thread (never expected)
        tally = LoadTally(build)
        tally.crashes.append(str(fault))
        return tally
