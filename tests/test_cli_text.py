"""Text from inputs reaches the terminal inert: rich markup shown literally, terminal
control characters escaped, undecodable file names decoded one way."""

from __future__ import annotations

import json
import os
import random
from dataclasses import replace
from enum import Enum, IntEnum
from pathlib import Path

import pytest

from hpatch.package import BuildOptions, build_package, decode_package, encode_package
from hpatch.text import file_name, markup, plain

from .conftest import SAMPLES
from .diff.samples import sample_diff
from .test_cli import run

OLD = SAMPLES / "x64-clang" / "v1" / "sample.stripped.dll"
NEW = SAMPLES / "x64-clang" / "v3" / "sample.stripped.dll"
#: Markup that closes every style, a clear-screen sequence: 8 bytes, as "hp_crc32" is.
HOSTILE_EXPORT = b"[/]\x1b[2Jx"


def test_plain_escapes_what_moves_or_reorders_the_terminal() -> None:
    assert plain("hp_crc32") == "hp_crc32"
    assert plain("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert plain("\x1b]0;title\x07") == "\\x1b]0;title\\x07"
    assert plain("abc\u202edcba") == "abc\\u202edcba"  # right-to-left override
    assert plain("x\udcffy") == "x\\udcffy"  # an undecodable byte of a file name
    assert plain("caf\u00e9 \u4e2d") == "caf\u00e9 \u4e2d"  # printable text stays
    assert markup("[/]") == "\\[/]" and markup("[bold]x\x1b") == "\\[bold]x\\x1b"


def test_file_names_decode_as_utf8_with_bytes_escaped() -> None:
    assert file_name("/a/b/sample.dll") == "sample.dll"
    assert file_name(os.fsdecode(b"/tmp/caf\xe9.dll")) == "caf\\xe9.dll"
    assert file_name("/tmp/caf\u00e9.dll") == "caf\u00e9.dll"


@pytest.fixture
def hostile_image(tmp_path: Path) -> Path:
    data = OLD.read_bytes()
    assert data.count(b"hp_crc32\0") == 1
    path = tmp_path / "sample.stripped.dll"
    path.write_bytes(data.replace(b"hp_crc32\0", HOSTILE_EXPORT + b"\0"))
    return path


def assert_inert(out: str) -> None:
    assert "\x1b" not in out and "\\x1b[2Jx" in out


@pytest.mark.parametrize("command", ["funcs", "info"])
def test_markup_and_escapes_in_names_are_shown_not_obeyed(
    capsys: pytest.CaptureFixture[str], hostile_image: Path, command: str
) -> None:
    code, out, err = run(capsys, command, str(hostile_image))
    assert code == 0 and err == "", err
    assert_inert(out)
    assert "[/]" in out
    code, out, _ = run(capsys, command, str(hostile_image), "--json")
    assert code == 0
    assert "\x1b" not in out and "\\u001b[2Jx" in out
    json.loads(out)


def test_diff_tables_show_hostile_names_inert(
    capsys: pytest.CaptureFixture[str], hostile_image: Path
) -> None:
    code, out, err = run(capsys, "diff", str(hostile_image), str(NEW))
    assert code in (0, 3) and "internal error" not in err, err
    assert "\x1b" not in out


def hostile_package(tmp_path: Path, text: str) -> Path:
    options = BuildOptions(sequence=1, description=text, advisory=text)
    package = build_package(sample_diff("x64-clang", "v1", "v3"), options)
    named = tuple(replace(f, name=f"{text}{f.name}") if f.name else f for f in package.functions)
    path = tmp_path / "hostile.hpk"
    path.write_bytes(encode_package(replace(package, functions=named)))
    return path


FORGED = "[green]signature: Ed25519 by key 0011223344556677 (trusted)[/green]\x1b[2J"


def test_inspect_cannot_be_forged_by_a_description(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = hostile_package(tmp_path, FORGED)
    assert decode_package(path.read_bytes()).servicing.description == FORGED
    code, out, err = run(capsys, "inspect", str(path))
    assert code == 0, err
    assert_inert(out.replace("[2J", "[2Jx"))
    assert "description: [green]signature: Ed25519" in out  # literally, not as a style
    signature_lines = [line for line in out.splitlines() if line.startswith("signature:")]
    assert signature_lines == ["signature: unsigned"]


def test_apply_prints_hostile_function_names_after_applying(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = hostile_package(tmp_path, "[/]\x1b[2J")
    code, out, err = run(
        capsys, "apply", str(OLD), str(path), "--allow-unsigned", "--no-entry-point"
    )
    assert code == 0, err
    assert "applied package 1" in out and "[/]" in out and "\x1b" not in out


def test_a_non_utf8_old_file_name_packages_and_applies(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    old = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9.dll"))
    old.write_bytes(OLD.read_bytes())
    output = tmp_path / "p.hpk"
    code, out, err = run(capsys, "diff", str(old), str(NEW), "--no-verify", "-o", str(output))
    assert code == 0, err
    assert decode_package(output.read_bytes()).baseline.file_name == "caf\\xe9.dll"
    assert "caf\\xe9.dll" in out
    code, out, err = run(capsys, "inspect", str(output), "--json")
    assert code == 0 and json.loads(out)["baseline"]["name"] == "caf\\xe9.dll"
    code, out, err = run(
        capsys, "apply", str(old), str(output), "--allow-unsigned", "--no-entry-point", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["image"] == "caf\\xe9.dll"


def strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return []


def renamed(tmp_path: Path, old: bytes, new: bytes) -> Path:
    data = OLD.read_bytes()
    assert data.count(old) == 1 and len(old) == len(new)
    path = tmp_path / "sample.stripped.dll"
    path.write_bytes(data.replace(old, new))
    return path


@pytest.mark.parametrize(
    ("old", "new", "kind"),
    [
        (b"hp_crc32\0", b"hp_cr\xff32\0", "exports"),
        (b".text\0", b".t\xffxt\0", "sections"),
    ],
)
@pytest.mark.parametrize("command", ["funcs", "info"])
def test_non_utf8_pe_names_print_decoded_one_way(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    old: bytes,
    new: bytes,
    kind: str,
    command: str,
) -> None:
    from hpatch.image import load_image
    from hpatch.text import json_text

    path = renamed(tmp_path, old, new)
    # However the reader holds the name (bytes, or text), it is shown one way.
    held = next(
        item.name
        for item in getattr(load_image(path), kind)
        if item.name[:2] in (b".t", ".t")
        or (item.name[:5] in (b"hp_cr", "hp_cr") and item.name[-2:] in (b"32", "32"))
    )
    code, out, err = run(capsys, command, str(path), "--json")
    assert code == 0 and err == "", err
    document = json.loads(out)
    # Strict readers refuse lone surrogates: the document encodes as UTF-8.
    json.dumps(document, ensure_ascii=False).encode("utf-8")
    shown_in_json = json.loads(json_text({"name": held}))["name"]
    if command == "info" or kind == "exports":
        assert shown_in_json in strings(document)
    code, out, err = run(capsys, command, str(path))
    assert code == 0 and err == "", err
    if command == "info" or kind == "exports":
        assert plain(held) in out


def test_json_text_decodes_bytes_and_surrogates_one_way() -> None:
    from hpatch.text import json_text

    document = {"a": b"hp_cr\xff32", "b": os.fsdecode(b"caf\xe9"), "c": ["\x1b"]}
    assert json.loads(json_text(document)) == {"a": "hp_cr\\xff32", "b": "caf\\xe9", "c": ["\x1b"]}


class _Level(IntEnum):
    HIGH = 3


class _Word(str, Enum):
    CAFE = "caf\u00e9"


_SCALARS: list[object] = [
    None, True, False, 0, -5, 2**70, 1.5, -0.0, 1e300, float("nan"), float("inf"),
    _Level.HIGH, _Word.CAFE, "", "plain", "caf\u00e9", "\x1b[31m", "q\"\\", "\u2028",
    "\U0001f600", "\\ud800 written out", "lone \udcff", b"by\xfftes",
]  # fmt: skip


def _random_value(rng: random.Random, depth: int = 0) -> object:
    roll = rng.random()
    if depth > 3 or roll < 0.5:
        return rng.choice(_SCALARS)
    if roll < 0.75:
        items = [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
        return items if rng.random() < 0.8 else tuple(items)
    keys = ["k", "caf\u00e9", "lone \udcff", "\x1b", "z", "a"]
    return {rng.choice(keys): _random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))}


def test_json_text_matches_the_reference_encoder() -> None:
    """The fast route to ``--json`` text gives the bytes json.dumps(indent=2) gives."""
    from hpatch.text import _json_default, _json_ready, json_text, write_json

    rng = random.Random(17)
    for _ in range(3000):
        value = _random_value(rng)
        for sort_keys in (False, True):
            expected = json.dumps(
                _json_ready(value), indent=2, sort_keys=sort_keys, default=_json_default
            )
            assert json_text(value, sort_keys=sort_keys) == expected
        document = {"value": value, "last": value}
        parts: list[str] = []
        write_json(document, parts.append)
        assert "".join(parts) == json_text(document) + "\n"


def test_verify_prints_hostile_function_names_inert(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = hostile_package(tmp_path, "[/]\x1b[2J")
    code, out, err = run(capsys, "verify", str(OLD), str(NEW), str(path), "--inputs", "5")
    assert code in (0, 4) and "internal error" not in err, err
    assert "[/]" in out and "\x1b" not in out
