"""The contract every command keeps: lazy start-up, the help listing, exit codes and the
JSON document a failure prints."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from hpatch import __version__
from hpatch.cli import COMMANDS, cli, main

from .conftest import SAMPLES

V1 = SAMPLES / "x64-clang" / "v1" / "sample.stripped.dll"
HEAVY = ("lief", "unicorn", "cryptography", "hpatch.image", "hpatch.diff", "hpatch.package")


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    captured = capsys.readouterr()
    return int(exited.value.code or 0), captured.out, captured.err


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version_load_no_command(flag: str) -> None:
    """``hpatch --help`` and ``--version`` import click and hpatch's root, not lief,
    Unicorn, cryptography or any command's module."""
    script = (
        f"import sys\nfrom hpatch.cli import main\ntry:\n    main([{flag!r}])\nexcept SystemExit:\n"
        "    pass\nprint(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('lief', 'unicorn', 'cryptography', 'capstone', 'rich') or m.startswith('hpatch.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    loaded = eval(out.strip().splitlines()[-1])  # a list literal printed by the child
    for heavy in HEAVY:
        assert not [m for m in loaded if m == heavy or m.startswith(heavy + ".")], loaded
    shared = ("hpatch.cli.output", "hpatch.cli.progress")  # what every command uses
    assert not [m for m in loaded if m.startswith("hpatch.cli.") and m not in shared]


def test_help_lists_every_command_in_workflow_order_with_its_own_summary() -> None:
    """The summaries ``--help`` shows without loading a command are the commands' own
    first docstring lines, and every command of the table resolves."""
    context = click.Context(cli)
    assert cli.list_commands(context) == [e.name for e in COMMANDS]
    for entry in COMMANDS:
        command = cli.get_command(context, entry.name)
        assert command is not None and command.help is not None
        assert command.help.strip().splitlines()[0] == entry.summary
        assert entry.module == importlib.import_module(entry.module).__name__


def test_help_names_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "5 nothing to package" in " ".join(out.split()) and "docs/cli.md" in out
    # every summary whole, none cut short with an ellipsis
    listing = " ".join(out.split())
    for entry in COMMANDS:
        assert f"{entry.name} {entry.summary}" in listing


def test_a_failing_command_prints_one_json_error_document(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    empty = tmp_path / "new.dll"
    empty.write_bytes(b"")
    code, out, err = run(capsys, "diff", str(V1), str(empty), "--json")
    assert code == 1
    document = json.loads(out)
    assert document["schema"] == "hpatch.diff/2" and document["hpatch_version"] == __version__
    error = document["error"]
    assert error["code"] == "file_refused" and error["exit_code"] == 1
    assert error["file"] == str(empty) and "empty file" in error["message"]
    assert "new.dll" in err and "empty file" in err


def test_a_usage_error_with_json_is_a_document_with_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "funcs", "--json", "--no-such-option", str(V1))
    assert code == 2
    assert json.loads(out)["error"]["code"] == "usage"


def test_nothing_to_package_exits_5(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The same build twice: hotpatchable, nothing changed, so ``diff -o`` writes no
    package and says so with its own exit code (a pipeline tells it from bad input)."""
    output = tmp_path / "p.hpk"
    code, out, err = run(capsys, "diff", str(V1), str(V1), "-o", str(output), "--json")
    assert code == 5, err
    document = json.loads(out)
    assert document["hotpatchable"] is True and document["package"] is None
    assert "nothing to package" in err and not output.exists()


def test_image_commands_load_neither_the_differ_nor_the_package_codec() -> None:
    """``funcs`` and ``info`` read one image: the diff, the package builder and codec,
    the emulator and cryptography stay unloaded."""
    script = (
        "import sys\nfrom hpatch.cli import main\ntry:\n"
        f"    main(['info', {str(V1)!r}, '--json'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules), file=sys.stderr)"
    )
    err = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stderr
    loaded = eval(err.strip().splitlines()[-1])  # a list literal printed by the child
    for unwanted in ("hpatch.diff", "hpatch.package", "hpatch.emu", "unicorn", "cryptography"):
        assert not [m for m in loaded if m == unwanted or m.startswith(unwanted + ".")], unwanted


def test_an_unsigned_diff_loads_neither_cryptography_nor_the_emulator() -> None:
    """``hpatch diff`` without ``-o`` or ``--sign-key`` builds the package to confirm its
    verdict, but signs nothing and proves nothing: cryptography and Unicorn stay unloaded."""
    v2 = SAMPLES / "x64-clang" / "v2" / "sample.stripped.dll"
    script = (
        "import sys\nfrom hpatch.cli import main\ntry:\n"
        f"    main(['diff', {str(V1)!r}, {str(v2)!r}, '--json'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules), file=sys.stderr)"
    )
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert json.loads(child.stdout)["hotpatchable"] is True, child.stderr
    loaded = eval(child.stderr.strip().splitlines()[-1])  # a list literal printed by the child
    assert "hpatch.package.build" in loaded
    for unwanted in ("hpatch.emu", "hpatch.verify", "unicorn", "cryptography"):
        assert not [m for m in loaded if m == unwanted or m.startswith(unwanted + ".")], unwanted


def test_shell_completion_lists_commands_and_options() -> None:
    """The completion docs/cli.md documents: click's, with the lazy command table."""
    hpatch = str(Path(sys.executable).with_name("hpatch"))

    def complete(words: str, index: int) -> list[str]:
        env = {"_HPATCH_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(index)}
        out = subprocess.run(
            [hpatch], capture_output=True, text=True, env={**os.environ, **env}, check=True
        ).stdout
        return [line.split(",", 1)[1] for line in out.splitlines()]

    assert complete("hpatch re", 1) == ["release"]
    assert set(complete("hpatch ", 1)) == {e.name for e in COMMANDS}
    assert "--sequence" in complete("hpatch diff --se", 2)
    script = subprocess.run(
        [hpatch],
        capture_output=True,
        text=True,
        env={**os.environ, "_HPATCH_COMPLETE": "bash_source"},
        check=True,
    ).stdout
    assert "complete -o nosort -F _hpatch_completion hpatch" in script


def test_a_package_to_stdout_is_the_file_it_would_write(tmp_path: Path) -> None:
    """``-o -`` writes the package to stdout, byte for byte what ``-o FILE`` writes,
    and the report to stderr."""
    hpatch = str(Path(sys.executable).with_name("hpatch"))
    v3 = SAMPLES / "x64-clang" / "v3" / "sample.stripped.dll"
    common = ["-q", "diff", str(V1), str(v3), "--no-verify", "--json"]
    piped = subprocess.run([hpatch, *common, "-o", "-"], capture_output=True, check=True)
    output = tmp_path / "p.hpk"
    subprocess.run([hpatch, *common, "-o", str(output)], capture_output=True, check=True)
    assert piped.stdout == output.read_bytes() and piped.stdout[:4] == b"\x89HPK"
    report = json.loads(piped.stderr)
    assert report["package"]["path"] == "-" and report["package"]["size"] == len(piped.stdout)
    assert not (Path.cwd() / "-").exists()
