"""Fault injection: every step of an apply, a replacement and a rollback is made to
fail in turn (through the address space's fault hook, which every mapping, protection
change, write, unmap and unwind-table change announces), with errors of several kinds;
after each failure the process must be exactly as it was before the operation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from hpatch.apply import ApplyOptions, apply_package, rollback
from hpatch.emu import Process
from hpatch.errors import AddressSpaceError, ApplyError

from .samples import package, process, snapshot

ALLOW = ApplyOptions(allow_unsigned=True)


class InjectedFault(Exception):
    """A failure no layer of hpatch knows about (a bug, a host error)."""


class InjectedInterrupt(BaseException):
    """A failure that is not even an Exception (as KeyboardInterrupt is not)."""


#: What a step fails with: an hpatch error the applier reports as ApplyError, an error
#: it knows nothing of, running out of memory, and an interrupt.
KINDS: dict[str, Callable[[str], BaseException]] = {
    "address-space": lambda step: AddressSpaceError(f"injected at {step}"),
    "exception": lambda step: InjectedFault(step),
    "memory": lambda step: MemoryError(step),
    "interrupt": lambda step: InjectedInterrupt(step),
}
#: (operation, the package it ends with): apply onto the baseline, replace package 2
#: with package 3, roll back package 2 or 3.
OPERATIONS = (
    ("apply", "v2"),
    ("apply", "v3"),
    ("replace", "v3"),
    ("rollback", "v2"),
    ("rollback", "v3"),
)


@dataclass
class FaultTally:
    injected: int = 0
    restored: int = 0
    steps: set[str] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)

    def merge(self, other: FaultTally) -> None:
        self.injected += other.injected
        self.restored += other.restored
        self.steps |= other.steps
        self.failures += other.failures


def _prepared(build: str, operation: str, version: str, base: int | None) -> Process:
    target = process(build, "v1", base)
    if operation == "replace":
        apply_package(target, package(build, "v1", "v2", 2), options=ALLOW)
    elif operation == "rollback":
        apply_package(target, package(build, "v1", version, int(version[1:])), options=ALLOW)
    return target


def _operate(target: Process, build: str, operation: str, version: str) -> None:
    if operation == "rollback":
        rollback(target)
    else:
        apply_package(target, package(build, "v1", version, int(version[1:])), options=ALLOW)


def inject_every_step(
    build: str, operation: str, version: str, base: int | None, kind: str
) -> FaultTally:
    """Fail step 1, then step 2, ... of one operation until it runs to the end."""
    tally = FaultTally()
    make = KINDS[kind]
    step = 0
    while True:
        target = _prepared(build, operation, version, base)
        before = snapshot(target)
        calls = 0

        def hook(name: str, at: int = step) -> None:
            nonlocal calls
            calls += 1
            tally.steps.add(name)
            if calls == at + 1:
                raise make(name)

        target.space.fault_hook = hook
        try:
            _operate(target, build, operation, version)
        except (ApplyError, InjectedFault, MemoryError, InjectedInterrupt) as error:
            target.space.fault_hook = None
            tally.injected += 1
            if snapshot(target) == before:
                tally.restored += 1
            else:
                tally.failures.append(f"{build} {operation} {version} step {step}: {error}")
            step += 1
            continue
        target.space.fault_hook = None
        return tally
