"""Hostile packages made from valid ones: a decoded record changed field by field and
encoded again (so the change reaches the checks behind the digest, the LZMA streams and
the canonical-form check), or the encoded bytes changed, then resealed and re-signed.

Values are pushed to their limits: every integer is tried at 0, 1, its neighbours,
the edges of 8/16/32/64-bit fields and the package's own sizes; strings at the 4096-byte
limit and one past it; lists emptied, truncated, reordered, duplicated and grown.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections import Counter
from enum import Enum

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hpatch.errors import PackageFormatError
from hpatch.package import Package, encode_package, lzma2
from hpatch.package.format import (
    DIGEST_SIZE,
    HEADER,
    KEY_ID_SIZE,
    SIGNATURE_SIZE,
    signed_message,
)
from hpatch.package.model import SignatureInfo
from hpatch.package.signing import key_id

#: Fields that are the package's representation or trust, not its content: the
#: signature is made afresh for every mutant, the coding follows from the content.
_SKIPPED = {"coding", "signature"}
_EDGES = (
    0,
    1,
    2,
    0x7F,
    0x80,
    0xFF,
    0x100,
    0xFFF,
    0x1000,
    0xFFFF,
    0x10000,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FFFF,
    1 << 32,
    (1 << 63) - 1,
    1 << 63,
    (1 << 64) - 1,
    1 << 64,
    1 << 70,
    -1,
    -(1 << 31),
)
_STRINGS = ("", "A" * 4096, "A" * 4097, "\u00e9" * 2049, "\0", "ntdll.dll", "\U0001f600" * 1025)
Path = tuple[str | int, ...]


def _leaves(value: object, path: Path = ()) -> list[tuple[Path, object]]:
    """Every mutable place in a package: fields, list elements, and lists themselves."""
    found: list[tuple[Path, object]] = []
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for item in dataclasses.fields(value):
            if item.name in _SKIPPED:
                continue
            found.extend(_leaves(getattr(value, item.name), (*path, item.name)))
    elif isinstance(value, tuple):
        found.append((path, value))
        for index, element in enumerate(value):
            found.extend(_leaves(element, (*path, index)))
    else:
        found.append((path, value))
    return found


def _replaced(value: object, path: Path, new: object) -> object:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(head, int):
        assert isinstance(value, tuple)
        return (*value[:head], _replaced(value[head], rest, new), *value[head + 1 :])
    return dataclasses.replace(value, **{head: _replaced(getattr(value, head), rest, new)})  # type: ignore[type-var]


def _sizes(package: Package) -> list[int]:
    """The package's own sizes and ends: the most telling limits for its offsets."""
    values = [package.region_size, package.baseline.size_of_image]
    values += [b.offset + b.size for b in package.blobs]
    values += [f.old_rva + f.old_size for f in package.functions]
    return [v + d for v in values for d in (-1, 0, 1)]


def _int(value: int, rng: random.Random, package: Package) -> int:
    pick = rng.randrange(5)
    if pick == 0:
        return value + rng.choice((-1, 1))
    if pick == 1:
        return rng.choice(_sizes(package))
    if pick == 2:
        return rng.choice((value * 2, value // 2, value ^ (1 << rng.randrange(32)), -value))
    return rng.choice(_EDGES)


def _bytes(value: bytes, rng: random.Random) -> bytes:
    pick = rng.randrange(5)
    if pick == 0 or not value:
        return value + rng.randbytes(rng.choice((1, 16, 4096, 1 << 20)))
    if pick == 1:
        return value[: rng.randrange(len(value))]
    if pick == 2:
        flipped = bytearray(value)
        flipped[rng.randrange(len(value))] ^= 1 << rng.randrange(8)
        return bytes(flipped)
    if pick == 3:
        return bytes(len(value))
    return b""


def _tuple(value: tuple, rng: random.Random) -> tuple:
    if not value:
        return value
    pick = rng.randrange(6)
    if pick == 0:
        return ()
    if pick == 1:
        index = rng.randrange(len(value))
        return value[:index] + value[index + 1 :]
    if pick == 2:
        index = rng.randrange(len(value))
        return value[: index + 1] + value[index:]
    if pick == 3:
        return value[::-1]
    if pick == 4:
        # Grown, but not without bound: the mutant must still be quick to make.
        return value * (rng.choice((2, 64)) if len(value) <= 16 else 2)
    left, right = rng.randrange(len(value)), rng.randrange(len(value))
    items = list(value)
    items[left], items[right] = items[right], items[left]
    return tuple(items)


def _mutated(value: object, rng: random.Random, package: Package) -> object:
    if isinstance(value, Enum):
        others = [member for member in type(value) if member != value]
        return rng.choice(others) if others else value
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return _int(value, rng, package)
    if isinstance(value, str):
        return rng.choice(_STRINGS)
    if isinstance(value, bytes):
        return _bytes(value, rng)
    if isinstance(value, tuple):
        return _tuple(value, rng)
    if value is None:  # an absent supersedes range
        return rng.choice(((0, 0), (1, 1), (0, (1 << 64) - 1)))
    raise TypeError(f"no mutation for {type(value).__name__}")


def _name(path: Path) -> str:
    return ".".join(str(p) if isinstance(p, str) else "[]" for p in path) or "package"


def mutate_record(
    package: Package, rng: random.Random, key: Ed25519PrivateKey | None
) -> tuple[bytes, str] | None:
    """One field (or list) of ``package`` changed, the package encoded again and signed
    by ``key``; None when the writer refuses the change (the model is inconsistent)."""
    # Field by field: a field is chosen first (each as likely as any other, however
    # many records have it), then one record's instance of it.
    fields: dict[str, list[Path]] = {}
    for path, _value in _leaves(package):
        fields.setdefault(_name(path), []).append(path)
    names_in_order = sorted(fields)
    mutant: object = package
    names = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        path = rng.choice(fields[rng.choice(names_in_order)])
        current = _value_at(mutant, path)
        if current is _MISSING:
            continue
        mutant = _replaced(mutant, path, _mutated(current, rng, package))
        names.append(_name(path))
    assert isinstance(mutant, Package)
    try:
        data = signed_encoding(mutant, key)
    except PackageFormatError:
        # The writer's to refuse: only what it encodes is a reader's input.
        return None
    except Exception as error:  # the writer's own robustness is not under test here
        WRITER_ERRORS[type(error).__name__] += 1
        return None
    return data, "record:" + "+".join(names)


def signed_encoding(package: Package, key: Ed25519PrivateKey | None) -> bytes:
    """``encode_package(sign_package(package, key))`` (unsigned without a key), with the
    body encoded once instead of twice: the signature covers the header and body, in
    which only the SIGNED flag depends on the signature."""
    if key is None:
        return encode_package(dataclasses.replace(package, signature=None))
    placeholder = SignatureInfo(key_id(key.public_key()), bytes(SIGNATURE_SIZE))
    message = signed_message(dataclasses.replace(package, signature=placeholder))
    return message + hashlib.sha256(message).digest() + placeholder.key_id + key.sign(message)


_MISSING = object()
#: Exceptions other than PackageFormatError the writer raised on a mutated record, by type.
WRITER_ERRORS: Counter[str] = Counter()


def _value_at(value: object, path: Path) -> object:
    for step in path:
        if isinstance(step, int):
            if not isinstance(value, tuple) or step >= len(value):
                return _MISSING
            value = value[step]
        else:
            value = getattr(value, step)
    return value


def reseal(data: bytes | bytearray, key: Ed25519PrivateKey | None) -> bytes:
    """``data`` with a correct SHA-256 (and, with ``key``, a fresh signature) over
    everything before its trailer, so a change reaches the parser behind them."""
    trailer = DIGEST_SIZE + (KEY_ID_SIZE + SIGNATURE_SIZE if key is not None else 0)
    if len(data) < HEADER.size + trailer:
        return bytes(data)
    message = bytes(data[: len(data) - trailer])
    sealed = message + hashlib.sha256(message).digest()
    if key is not None:
        sealed += key_id(key.public_key()) + key.sign(message)
    return sealed


def mutate_bytes(
    data: bytes, rng: random.Random, key: Ed25519PrivateKey | None
) -> tuple[bytes, str]:
    """Bytes of the encoded package changed (flips, edge values, inserts, deletions,
    truncation, junk appended, oversized), resealed most of the time."""
    out = bytearray(data)
    body_end = len(data) - DIGEST_SIZE - (KEY_ID_SIZE + SIGNATURE_SIZE if key else 0)
    pick = rng.randrange(7)
    at = rng.randrange(len(out))
    if pick == 0:
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        how = "bytes:flip"
    elif pick == 1:
        out[at] = rng.choice((0x00, 0x01, 0x7F, 0x80, 0xFF))
        how = "bytes:edge"
    elif pick == 2:
        out[at:at] = rng.randbytes(rng.randint(1, 64))
        how = "bytes:insert"
    elif pick == 3:
        del out[at : at + rng.randint(1, 64)]
        how = "bytes:delete"
    elif pick == 4:
        out = out[: rng.randrange(len(out))]
        how = "bytes:truncate"
    elif pick == 5:
        out[body_end:body_end] = rng.randbytes(rng.choice((1, 100, 1 << 16)))
        how = "bytes:append"
    else:
        end = rng.randrange(HEADER.size, body_end)
        out[end:end] = out[HEADER.size : end] * rng.choice((1, 2))
        how = "bytes:repeat"
    if rng.random() < 0.8:
        return reseal(out, key), how + "+resealed"
    return bytes(out), how


def mutate_metadata(
    data: bytes, rng: random.Random, key: Ed25519PrivateKey | None
) -> tuple[bytes, str]:
    """The decompressed metadata changed byte-wise (varints stretched to 10 bytes or
    cut, edge values, deletions), compressed again and resealed: past the LZMA layer,
    into the record parser."""
    trailer = DIGEST_SIZE + (KEY_ID_SIZE + SIGNATURE_SIZE if key else 0)
    body = data[HEADER.size : len(data) - trailer]
    first, rest = lzma2.split(body)
    metadata = bytearray(lzma2.decompress(first, b"", lzma2.unpacked_size(first)))
    at = rng.randrange(len(metadata))
    pick = rng.randrange(5)
    if pick == 0:
        metadata[at : at + 1] = b"\xff" * 9 + b"\x01"
        how = "metadata:long-varint"
    elif pick == 1:
        metadata[at] = rng.choice((0x00, 0x7F, 0x80, 0xFF))
        how = "metadata:edge"
    elif pick == 2:
        del metadata[at : at + rng.randint(1, 8)]
        how = "metadata:delete"
    elif pick == 3:
        metadata[at:at] = rng.randbytes(rng.randint(1, 8))
        how = "metadata:insert"
    else:
        metadata = metadata[:at]
        how = "metadata:truncate"
    coded = lzma2.compress(bytes(metadata), b"", lc=0, lp=0, pb=0)
    return reseal(data[: HEADER.size] + coded + rest + bytes(trailer), key), how


def mutant(
    package: Package, data: bytes, rng: random.Random, key: Ed25519PrivateKey | None
) -> tuple[bytes, str]:
    """A hostile package made from ``package`` (encoded as ``data``), signed by ``key``."""
    pick = rng.random()
    if pick < 0.5:
        for _ in range(20):
            made = mutate_record(package, rng, key)
            if made is not None:
                return made
    if pick < 0.75:
        return mutate_metadata(data, rng, key)
    return mutate_bytes(data, rng, key)
