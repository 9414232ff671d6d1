"""The hostile campaigns: the command line, as a user runs it, against structure-aware
PE mutants, hostile packages re-signed with a trusted key, package bombs, misuse with
device nodes, FIFOs, symbolic links and long names, and concurrent writers.

Every run is ``python -m hpatch ...`` in a child process of its own, so a run's peak
memory is the child's own (its VmHWM, sampled while it runs), a run that blocks is killed at
its time bound (a hang), a run whose peak passes MEMORY_BOUND fails, and one resident
past KILL_BOUND is killed. A run passes when it exits with a documented code (0-6) and
a code its kind allows, prints neither "internal error" nor a traceback nor a raw
terminal escape, and leaves the files around it as its check wants (inputs unchanged,
no temporary file left, a package written whole). The inputs are made by the mutators
the unit tests already use (tests/image/mutants.py, tests/package/test_format_bombs.py,
package_mutations.py).

``scale="full"`` is the campaign of docs/reliability.md (``figures.py --only
hostile``); ``scale="ci"`` a bounded selection of every kind, for ``make test``.
"""

from __future__ import annotations

import os
import random
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from hpatch.package import decode_package

from ..conftest import SAMPLES
from ..image.mutants import (
    SCN_CODE_READ_EXECUTE,
    renamed_section,
    renamed_string,
    with_functions,
    with_section,
)
from ..package.test_format_bombs import _seal, bomb
from ..test_cli_text import FORGED, HOSTILE_EXPORT
from .package_mutations import mutate_record, signed_encoding
from .samples import signed, signed_bytes, signing_key, stranger_key

#: The exit codes of the command-line contract (DESIGN.md, rule 11).
DOCUMENTED = frozenset(range(7))
#: The bound of the campaign (every input is under 64 MB): a run whose peak resident
#: size passes it fails; one resident past KILL_BOUND is killed (to spare the machine).
MEMORY_BOUND = 1 << 30
KILL_BOUND = 4 << 30
KINDS = ("pe-mutants", "resigned-packages", "package-bombs", "cli-misuse", "concurrent-writers")
IMAGE = "sample.stripped.dll"
OLD = SAMPLES / "x64-clang" / "v1" / IMAGE
NEW = SAMPLES / "x64-clang" / "v3" / IMAGE
ARM_OLD = SAMPLES / "arm64-clang" / "v1" / IMAGE
#: The counts pushed to a million, and what CI pushes them to.
COUNTS = {"full": (100_000, 1_000_000), "ci": (20_000,)}


@dataclass(frozen=True)
class Run:
    """One command line. ``args`` follow ``hpatch``; ``codes`` are the exit codes this
    run may give; ``check`` looks at the files afterwards (a problem in words, or None);
    ``creates`` names the work-directory entries the run may add or change."""

    label: str
    args: tuple[str | bytes, ...]
    codes: frozenset[int] = DOCUMENTED
    check: Callable[[], str | None] | None = None
    creates: frozenset[str] = frozenset()
    timeout: float = 120.0


@dataclass
class Result:
    label: str
    code: int | None  # None: killed
    seconds: float
    peak_kib: int
    problem: str | None


@dataclass
class HostileTally:
    """What one campaign kind did."""

    kind: str
    inputs: int = 0
    input_bytes: int = 0  # the largest input
    runs: int = 0
    seconds: float = 0.0  # wall time of the campaign, making the inputs included
    slowest: float = 0.0
    slowest_run: str = ""
    peak_kib: int = 0
    peak_run: str = ""
    codes: Counter[str] = field(default_factory=Counter)
    internal: int = 0
    tracebacks: int = 0
    hangs: int = 0
    over_memory: int = 0
    unexpected: list[str] = field(default_factory=list)
    #: (label, exit code, seconds, peak KiB) of every run, for the per-input figures.
    results: list[tuple[str, int | None, float, int]] = field(default_factory=list)

    @property
    def failures(self) -> int:
        return len(self.unexpected)

    def add(self, result: Result) -> None:
        self.runs += 1
        self.results.append((result.label, result.code, result.seconds, result.peak_kib))
        self.codes["killed" if result.code is None else str(result.code)] += 1
        if result.seconds > self.slowest:
            self.slowest, self.slowest_run = result.seconds, result.label
        if result.peak_kib > self.peak_kib:
            self.peak_kib, self.peak_run = result.peak_kib, result.label
        if result.problem is not None:
            self.hangs += result.problem.startswith("hang")
            self.over_memory += "over memory" in result.problem
            self.internal += "internal error" in result.problem
            self.tracebacks += "traceback" in result.problem
            self.unexpected.append(f"{result.label}: {result.problem}")


def _memory_kib(pid: int) -> tuple[int, int]:
    """(resident, high-water mark) of ``pid``'s own address space, in KiB; zeros once it
    is gone."""
    found = {"VmRSS:": 0, "VmHWM:": 0}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                key = line.split(":", 1)[0] + ":"
                if key in found:
                    found[key] = int(line.split()[1])
    except OSError:
        pass
    return found["VmRSS:"], found["VmHWM:"]


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    env.setdefault("COLUMNS", "120")
    return env


def _start(args: tuple[str | bytes, ...], cwd: Path) -> tuple[subprocess.Popen, object, object]:
    # Closed by _judge once the run is over.
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()  # noqa: SIM115
    child = subprocess.Popen(
        [sys.executable, "-m", "hpatch", *args],
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=err,
        cwd=cwd,
        env=_environment(),
    )
    return child, out, err


def _judge(run: Run, code: int | None, why: str | None, out, err) -> str | None:
    err.seek(0)
    stderr = err.read().decode("utf-8", "replace")
    out.seek(0)
    # Output goes to a file, so rich adds no styles: an ESC byte came from an input.
    escapes = b"\x1b" in out.read() or "\x1b" in stderr
    out.close()
    err.close()
    if why is not None:
        return why
    problems = []
    if code not in DOCUMENTED:
        problems.append(f"exit {code}, not a documented code")
    elif code not in run.codes:
        problems.append(f"exit {code}, expected {sorted(run.codes)}")
    if "internal error" in stderr:
        problems.append("internal error")
    if "Traceback" in stderr:
        problems.append("traceback")
    if escapes:
        problems.append("a raw ESC byte in the output")
    if problems:
        return "; ".join(problems) + f": {stderr.strip()[-300:]}"
    return None


def execute(runs: list[Run], cwd: Path) -> list[Result]:
    """``runs`` started at once (one at a time: a list of one), each waited for with
    its time and memory bound; their results in order."""
    started = time.monotonic()
    children = [_start(run.args, cwd) for run in runs]
    results: list[Result | None] = [None] * len(runs)
    # A child's peak is its own high-water mark, sampled while it runs: wait4's
    # ru_maxrss also counts the parent's memory at the fork (Linux keeps the high-water
    # mark of the address space an exec replaces), so it is only the fallback for a run
    # too short to be sampled.
    marks = [0] * len(runs)
    while any(result is None for result in results):
        for index, (run, (child, out, err)) in enumerate(zip(runs, children, strict=True)):
            if results[index] is not None:
                continue
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            took = time.monotonic() - started
            why, code, peak = None, None, 0
            if pid:
                code = os.waitstatus_to_exitcode(status)
                child.returncode = code
                peak = marks[index] or usage.ru_maxrss
            else:
                rss, mark = _memory_kib(child.pid)
                marks[index] = max(marks[index], mark)
                if took > run.timeout:
                    why = f"hang: still running after {run.timeout:.0f} s"
                elif rss * 1024 > KILL_BOUND:
                    why = f"over memory: {rss // 1024} MiB resident, killed"
                else:
                    continue
                child.kill()
                _pid, _status, usage = os.wait4(child.pid, 0)
                child.returncode = -9
                peak = marks[index] or usage.ru_maxrss
            if why is None and peak * 1024 > MEMORY_BOUND:
                why = f"over memory: peak {peak // 1024} MiB (exit {code})"
            problem = _judge(run, code, why, out, err)
            if problem is None and run.check is not None:
                problem = run.check()
            results[index] = Result(run.label, code, took, peak, problem)
        time.sleep(0.02)
    return [result for result in results if result is not None]


# -- the work directory -------------------------------------------------------------------


def _snapshot(directory: Path) -> dict[str, tuple[int, bytes | str]]:
    """Every entry of ``directory`` (not below): its kind and its bytes or link target."""
    seen: dict[str, tuple[int, bytes | str]] = {}
    for entry in os.scandir(directory):
        mode = entry.stat(follow_symlinks=False).st_mode
        if stat.S_ISLNK(mode):
            seen[entry.name] = (stat.S_IFMT(mode), os.readlink(entry.path))
        elif stat.S_ISREG(mode):
            seen[entry.name] = (stat.S_IFMT(mode), Path(entry.path).read_bytes())
        else:
            seen[entry.name] = (stat.S_IFMT(mode), "")
    return seen


def run_in(directory: Path, tally: HostileTally, runs: list[Run]) -> None:
    """Each of ``runs`` in turn in ``directory``; beyond its own check, a run may change
    only the entries it ``creates``, and leaves no temporary file."""
    for run in runs:
        before = _snapshot(directory)
        (result,) = execute([run], directory)
        after = _snapshot(directory)
        if result.problem is None:
            changed = sorted(
                os.fsdecode(name) if isinstance(name, bytes) else name
                for name in set(before) | set(after)
                if before.get(name) != after.get(name) and name not in run.creates
            )
            if changed:
                result.problem = f"changed {changed}"
        tally.add(result)


def _decodes(path: Path) -> Callable[[], str | None]:
    def check() -> str | None:
        try:
            decode_package(path.read_bytes())
        except Exception as error:  # what the output is, in words
            return f"{path.name} is not a whole package: {error}"
        return None

    return check


def _public_pem() -> bytes:
    return (
        signing_key()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def _private_pem() -> bytes:
    return signing_key().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _workdir(root: Path) -> Path:
    """old.dll, new.dll, the signed sample package v1 -> v3 and the trusted key."""
    shutil.copyfile(OLD, root / "old.dll")
    (root / "base").mkdir()
    shutil.copyfile(OLD, root / "base" / IMAGE)  # apply checks the file's name too
    shutil.copyfile(NEW, root / "new.dll")
    (root / "update.hpk").write_bytes(signed_bytes("x64-clang", "v1", "v3", 3))
    (root / "trusted.pub").write_bytes(_public_pem())
    (root / "release.key").write_bytes(_private_pem())
    return root


def _add_input(tally: HostileTally, data: bytes) -> None:
    tally.inputs += 1
    tally.input_bytes = max(tally.input_bytes, len(data))


# -- structure-aware PE mutants -----------------------------------------------------------


def pe_mutants(scale: str) -> Iterator[tuple[str, bytes, bool]]:
    """(name, image, whether every command runs on it) for each mutant of the scale."""
    # The zero-fill and name mutants start from the x64-clang v1 sample (NEW is its v3),
    # the counts from x64-gcc v1, as tests/image/test_scaling.py.
    data = OLD.read_bytes()
    huge = [
        ("sizeofimage-1g-unbacked", with_section(data, b".huge", 1 << 30)),
        (
            "sizeofimage-512m-code-unbacked",
            with_section(data, b".big", 512 << 20, SCN_CODE_READ_EXECUTE),
        ),
    ]
    names = [
        ("section-name-not-utf8", renamed_section(data, 0, b".t\xff\xfe\x80\xc3(")),
        ("section-name-markup", renamed_section(data, 1, b"[/]\x1b[2J")),
        ("export-name-not-utf8", renamed_string(data, b"hp_crc32", b"hp\xff\xfe\x80\xc3(x")),
        ("export-name-markup", renamed_string(data, b"hp_crc32", HOSTILE_EXPORT)),
    ]
    if scale == "ci":
        yield huge[0][0], huge[0][1], False
        yield names[2][0], names[2][1], False
        yield names[3][0], names[3][1], False
    else:
        for name, image in huge + names:
            yield name, image, True
    for count in COUNTS[scale]:
        gcc = (SAMPLES / "x64-gcc" / "v1" / IMAGE).read_bytes()
        yield f"pdata-{count}", with_functions(gcc, count), False
        yield f"exports-{count}", with_functions(gcc, count, pdata=False, exports=True), False


def pe_runs(name: str, every: bool, scale: str) -> list[Run]:
    image = f"{name}/{IMAGE}"
    if scale == "ci":
        if name.startswith(("pdata", "exports")):
            return [Run(f"{name}: funcs --json", ("funcs", image, "--json"))]
        if name.startswith("sizeofimage"):
            return [Run(f"{name}: info", ("info", image))]
        if name.endswith("not-utf8"):
            return [Run(f"{name}: funcs", ("funcs", image))]
        trusted = ("--trust", "trusted.pub", "--json")
        return [Run(f"{name}: apply the sample package", ("apply", image, "update.hpk", *trusted))]
    if not every:
        runs = [
            Run(f"{name}: info --json", ("info", image, "--json"), timeout=300),
            Run(f"{name}: funcs --json", ("funcs", image, "--json"), timeout=300),
        ]
        if not name.endswith("1000000"):
            runs.append(Run(f"{name}: diff --json", ("diff", image, "new.dll", "--json")))
        return runs
    package = f"{name}.hpk"
    return [
        Run(f"{name}: info", ("info", image)),
        Run(f"{name}: info --json", ("info", image, "--json")),
        Run(f"{name}: funcs", ("funcs", image)),
        Run(f"{name}: funcs --json", ("funcs", image, "--json")),
        Run(f"{name}: diff", ("diff", image, "new.dll")),
        Run(f"{name}: diff (as NEW) --json", ("diff", "old.dll", image, "--json")),
        Run(
            f"{name}: diff -o",
            ("diff", image, "new.dll", "--no-verify", "-o", package),
            creates=frozenset({package}),
        ),
        Run(f"{name}: inspect its package", ("inspect", package)),
        Run(
            f"{name}: apply its package",
            ("apply", image, package, "--allow-unsigned", "--rollback", "--json"),
        ),
        Run(
            f"{name}: apply the sample package",
            ("apply", image, "update.hpk", "--trust", "trusted.pub", "--json"),
        ),
    ]


def campaign_pe(scale: str, root: Path) -> HostileTally:
    tally = HostileTally("pe-mutants")
    for name, image, every in pe_mutants(scale):
        _add_input(tally, image)
        (root / name).mkdir()
        (root / name / IMAGE).write_bytes(image)
        run_in(root, tally, pe_runs(name, every, scale))
        shutil.rmtree(root / name)
        (root / f"{name}.hpk").unlink(missing_ok=True)
    return tally


# -- semantically hostile packages, re-signed with the trusted key -----------------------


def hostile_packages(scale: str) -> Iterator[tuple[str, str, bytes]]:
    """(name, build, package bytes): well-formed, signed by the trusted key, hostile."""
    for build in ("x64-clang",) if scale == "ci" else ("x64-clang", "arm64-clang"):
        package = signed(build, "v1", "v3", 3)
        named = tuple(
            replace(f, name=f"{FORGED}{f.name}") if f.name else f for f in package.functions
        )
        servicing = replace(package.servicing, description=FORGED, advisory=FORGED)
        markup = replace(package, servicing=servicing, functions=named)
        yield "markup-and-escapes", build, signed_encoding(markup, signing_key())
        if scale == "ci":
            continue
        rng = random.Random(f"hostile/{build}")
        made = 0
        while made < 10:
            mutant = mutate_record(package, rng, signing_key())
            if mutant is not None:
                made += 1
                yield f"{mutant[1]}#{made}", build, mutant[0]


def campaign_packages(scale: str, root: Path) -> HostileTally:
    tally = HostileTally("resigned-packages")
    for index, (name, build, data) in enumerate(hostile_packages(scale)):
        _add_input(tally, data)
        package = f"hostile{index}.hpk"
        (root / package).write_bytes(data)
        (root / build).mkdir(exist_ok=True)
        shutil.copyfile(SAMPLES / build / "v1" / IMAGE, root / build / IMAGE)
        label = f"{build} {name}"
        runs = [
            Run(f"{label}: inspect --trust", ("inspect", package, "--trust", "trusted.pub")),
            Run(
                f"{label}: apply --rollback",
                ("apply", f"{build}/{IMAGE}", package, "--trust", "trusted.pub", "--rollback"),
            ),
        ]
        if scale == "full":
            runs += [
                Run(f"{label}: inspect --json", ("inspect", package, "--json")),
                Run(
                    f"{label}: apply --json",
                    ("apply", f"{build}/{IMAGE}", package, "--trust", "trusted.pub", "--json"),
                ),
            ]
        run_in(root, tally, runs)
        (root / package).unlink()
    return tally


# -- package bombs ------------------------------------------------------------------------


def bombs(scale: str) -> Iterator[tuple[str, bytes]]:
    """(name, package): a few hundred bytes declaring 100,000 or 1,000,000 records,
    unsigned, signed by the trusted key, or by a stranger."""
    from hpatch.package.format import open_envelope

    for count in (1_000_000,) if scale == "ci" else (100_000, 1_000_000):
        unsigned = bomb(count)
        body = open_envelope(unsigned).body
        yield f"{count}-unsigned", unsigned
        yield f"{count}-trusted", _seal(body, signing_key())
        if scale == "full":
            yield f"{count}-untrusted", _seal(body, stranger_key())
            named = bomb(count, lambda i: "[/]" if i % 2 else "\x1b[2J")
            yield f"{count}-markup-names-trusted", _seal(open_envelope(named).body, signing_key())


def campaign_bombs(scale: str, root: Path) -> HostileTally:
    tally = HostileTally("package-bombs")
    refused = frozenset({1, 6})
    for name, data in bombs(scale):
        _add_input(tally, data)
        package = f"bomb-{name}.hpk"
        (root / package).write_bytes(data)
        trusted = ("--trust", "trusted.pub")
        inspect = Run(f"{name}: inspect --trust", ("inspect", package, *trusted), refused)
        apply = Run(
            f"{name}: apply --trust", ("apply", f"base/{IMAGE}", package, *trusted), refused
        )
        runs = (
            [inspect if name.endswith("trusted") else apply] if scale == "ci" else [inspect, apply]
        )
        if scale == "full":
            runs += [
                Run(f"{name}: inspect", ("inspect", package), refused),
                Run(f"{name}: inspect --json", ("inspect", package, "--json"), refused),
                Run(
                    f"{name}: apply --allow-unsigned",
                    ("apply", f"base/{IMAGE}", package, "--allow-unsigned", "--json"),
                    refused,
                ),
            ]
        run_in(root, tally, runs)
        (root / package).unlink()
    return tally


# -- misuse: device nodes, FIFOs, symbolic links, long names ------------------------------


def _null_device(path: Path) -> bool:
    """A character device like /dev/null at ``path`` (so that a run writing over it
    could only ever replace this one); False where nodes cannot be made."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except OSError:
        return False
    return True


def _still(path: Path, kind: Callable[[int], bool], what: str) -> Callable[[], str | None]:
    def check() -> str | None:
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return f"{path.name} is gone"
        return None if kind(mode) else f"{path.name} is no longer {what}"

    return check


def _absent(path: Path) -> Callable[[], str | None]:
    return lambda: f"{path} was created" if os.path.lexists(path) else None


def misuse_runs(scale: str, root: Path, elsewhere: Path) -> list[Run]:
    os.mkfifo(root / "fifo")
    (root / "to-old.hpk").symlink_to("old.dll")
    (root / "dangling.hpk").symlink_to(elsewhere / "victim.hpk")
    (root / "devtrust").mkdir()
    (root / "devtrust" / "zero.pub").symlink_to("/dev/zero")
    (root / "empty.dll").write_bytes(b"")
    (root / "adir.dll").mkdir()
    (root / "keyed").mkdir()
    (root / "keyed" / "new.key.pub").symlink_to(elsewhere / "made.pub")
    shutil.copyfile(OLD, root / os.fsdecode(b"caf\xe9.dll"))
    long_name = "p" * 246 + ".hpk"
    diff = ("diff", "old.dll", "new.dll", "--no-verify")
    fifo_still = _still(root / "fifo", stat.S_ISFIFO, "a FIFO")
    one = frozenset({1})
    usage = frozenset({1, 2})  # a directory where a file goes: click says so
    zero = frozenset({0})
    base = f"base/{IMAGE}"
    trusted = ("--trust", "trusted.pub")
    null_still = _still(root / "null", stat.S_ISCHR, "a device")
    no_signed = _absent(root / "signed.hpk")
    no_victim = _absent(elsewhere / "victim.hpk")
    longest = "q" * 251 + ".hpk"
    runs = [
        Run("/dev/zero as image: info", ("info", "/dev/zero"), one, timeout=60),
        Run(
            "/dev/zero as --trust",
            ("apply", base, "update.hpk", "--trust", "/dev/zero"),
            one,
            timeout=60,
        ),
        Run(
            "fifo as package: apply",
            ("apply", base, "fifo", *trusted),
            one,
            check=fifo_still,
            timeout=60,
        ),
        Run(
            "/dev/null as output: diff -o --force",
            (*diff, "-o", "null", "--force"),
            one,
            check=null_still,
        ),
        Run(
            "250-byte output name: diff -o",
            (*diff, "-o", long_name),
            zero,
            check=_decodes(root / long_name),
            creates=frozenset({long_name}),
        ),
    ]
    if scale == "ci":
        return runs
    runs += [
        Run("fifo as image: funcs", ("funcs", "fifo"), one, check=fifo_still, timeout=60),
        Run("/dev/zero as image: funcs", ("funcs", "/dev/zero"), one, timeout=60),
        Run(
            "/dev/zero as image: apply",
            ("apply", "/dev/zero", "update.hpk", *trusted),
            one,
            timeout=60,
        ),
        Run("/dev/zero as package: apply", ("apply", base, "/dev/zero", *trusted), one, timeout=60),
        Run(
            "/dev/zero as --sign-key",
            (*diff, "-o", "signed.hpk", "--sign-key", "/dev/zero"),
            one,
            check=no_signed,
            timeout=60,
        ),
        Run(
            "/dev/zero as a *.pub of --trust",
            ("inspect", "update.hpk", "--trust", "devtrust"),
            one,
            timeout=60,
        ),
        Run("/dev/zero as OLD: diff", ("diff", "/dev/zero", "new.dll"), one, timeout=60),
        Run("/dev/zero as package: inspect", ("inspect", "/dev/zero"), one, timeout=60),
        Run("/dev/null as image: info", ("info", "/dev/null"), one),
        Run("/dev/null as package: inspect", ("inspect", "/dev/null"), one),
        Run("/dev/null as --trust", ("inspect", "update.hpk", "--trust", "/dev/null"), one),
        Run(
            "/dev/null as --sign-key",
            (*diff, "-o", "signed.hpk", "--sign-key", "/dev/null"),
            one,
            check=no_signed,
        ),
        Run("/dev/null as output: diff -o", (*diff, "-o", "null"), one, check=null_still),
        Run("/dev/null as output: keygen", ("keygen", "null"), one, check=null_still),
        Run("fifo as image: info", ("info", "fifo"), one, check=fifo_still, timeout=60),
        Run("fifo as NEW: diff", ("diff", "old.dll", "fifo"), one, check=fifo_still, timeout=60),
        Run("fifo as package: inspect", ("inspect", "fifo"), one, check=fifo_still, timeout=60),
        Run(
            "fifo as --trust",
            ("inspect", "update.hpk", "--trust", "fifo"),
            one,
            check=fifo_still,
            timeout=60,
        ),
        Run(
            "fifo as --sign-key",
            (*diff, "-o", "signed.hpk", "--sign-key", "fifo"),
            one,
            check=fifo_still,
            timeout=60,
        ),
        Run(
            "fifo as output: diff -o --force",
            (*diff, "-o", "fifo", "--force"),
            one,
            check=fifo_still,
            timeout=60,
        ),
        Run(
            "symlink to OLD as output: diff -o --force", (*diff, "-o", "to-old.hpk", "--force"), one
        ),
        Run("OLD as output: diff -o --force", (*diff, "-o", "old.dll", "--force"), one),
        Run(
            "signing key as output: diff -o --force",
            (*diff, "-o", "release.key", "--sign-key", "release.key", "--force"),
            one,
        ),
        Run(
            "dangling symlink as output: diff -o",
            (*diff, "-o", "dangling.hpk"),
            one,
            check=no_victim,
        ),
        Run(
            "dangling symlink as output: diff -o --force",
            (*diff, "-o", "dangling.hpk", "--force"),
            one,
            check=no_victim,
        ),
        Run(
            "dangling KEY.pub symlink: keygen",
            ("keygen", "keyed/new.key"),
            one,
            check=_absent(elsewhere / "made.pub"),
        ),
        Run("250-byte output name again: diff -o (exists)", (*diff, "-o", long_name), one),
        Run(
            "250-byte output name: diff -o --force",
            (*diff, "-o", long_name, "--force"),
            zero,
            check=_decodes(root / long_name),
            creates=frozenset({long_name}),
        ),
        Run(
            "255-byte output name: diff -o",
            (*diff, "-o", longest),
            zero,
            check=_decodes(root / longest),
            creates=frozenset({longest}),
        ),
        Run("256-byte output name: diff -o", (*diff, "-o", "r" * 252 + ".hpk"), one),
        Run(
            "non-UTF-8 OLD name: diff -o",
            ("diff", b"caf\xe9.dll", "new.dll", "--no-verify", "-o", "cafe.hpk"),
            zero,
            check=_decodes(root / "cafe.hpk"),
            creates=frozenset({"cafe.hpk"}),
        ),
        Run("empty file as image: info", ("info", "empty.dll"), one),
        Run("directory as image: info", ("info", "adir.dll"), usage),
        Run("directory as output: diff -o --force", (*diff, "-o", "adir.dll", "--force"), usage),
    ]
    return runs


def campaign_misuse(scale: str, root: Path) -> HostileTally:
    tally = HostileTally("cli-misuse")
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    work = root / "misuse"
    work.mkdir()
    _workdir(work)
    runs = misuse_runs(scale, work, elsewhere)
    if not _null_device(work / "null"):
        runs = [run for run in runs if "null" not in run.args]
    tally.inputs = 12 if scale == "full" else 6  # devices, FIFO, links, names, files
    tally.input_bytes = max(OLD.stat().st_size, NEW.stat().st_size)
    run_in(work, tally, runs)
    return tally


# -- concurrent writers -------------------------------------------------------------------


def campaign_concurrent(scale: str, root: Path) -> HostileTally:
    """Rounds of several ``diff -o`` to one output at once, with and without --force:
    every writer exits 0 or 1 (the output exists), without --force exactly one wins,
    the output is one whole package, and no temporary file is left."""
    tally = HostileTally("concurrent-writers")
    writers, rounds = (3, 1) if scale == "ci" else (4, 5)
    tally.inputs = 2
    tally.input_bytes = max(OLD.stat().st_size, NEW.stat().st_size)
    work = root / "concurrent"
    work.mkdir()
    _workdir(work)
    for round_index in range(rounds):
        for force in (True,) if scale == "ci" else (False, True):
            output = work / "shared.hpk"
            output.unlink(missing_ok=True)
            if force:
                output.write_bytes(b"an earlier package")
            args = ("diff", "old.dll", "new.dll", "--no-verify", "-o", "shared.hpk")
            args += ("--force",) if force else ()
            runs = [
                Run(
                    f"round {round_index} {'--force ' if force else ''}writer {w}",
                    args,
                    frozenset({0, 1}),
                    check=_decodes(output),
                )
                for w in range(writers)
            ]
            results = execute(runs, work)
            won = sum(result.code == 0 for result in results)
            left = sorted(p.name for p in work.iterdir() if p.name.endswith(".tmp"))
            for result in results:
                if result.problem is None and left:
                    result.problem = f"temporary files left: {left}"
                if result.problem is None and not force and won != 1:
                    result.problem = f"{won} writers won without --force"
                tally.add(result)
    return tally


CAMPAIGNS: dict[str, Callable[[str, Path], HostileTally]] = {
    "pe-mutants": campaign_pe,
    "resigned-packages": campaign_packages,
    "package-bombs": campaign_bombs,
    "cli-misuse": campaign_misuse,
    "concurrent-writers": campaign_concurrent,
}


def campaign(kind: str, scale: str) -> HostileTally:
    """Run the campaign ``kind`` at ``scale`` ("full" or "ci") in a directory of its own."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"hpatch-{kind}-") as directory:
        root = Path(directory)
        if kind in ("pe-mutants", "resigned-packages", "package-bombs"):
            _workdir(root)
        tally = CAMPAIGNS[kind](scale, root)
    tally.seconds = time.perf_counter() - started
    return tally
