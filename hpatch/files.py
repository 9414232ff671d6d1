"""Reading inputs and writing outputs without surprises.

Inputs are regular files only (never a device, FIFO, socket or directory: checked
before they are opened, and again on the open file), read up to a size cap checked
before the first byte is read. Outputs are written whole or not at all: an
exclusively created temporary file with an unpredictable name in the target
directory, flushed to disk, then renamed over the target; never over an input of the
command, never over anything but a regular file, and over an existing file only when
the caller says so (``--force``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Iterable

from hpatch.errors import HPatchError
from hpatch.text import path_text

#: The largest PE file hpatch reads (a PE's own fields cannot describe more than 4 GiB,
#: and the largest DLLs shipped today are a few hundred MiB).
MAX_IMAGE_FILE = 512 << 20
#: The largest key or trust file: a PEM Ed25519 key is about 120 bytes.
MAX_KEY_FILE = 64 << 10

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISLNK, "a symbolic link"),
)


class FileRefused(HPatchError):
    """An input or output path names something hpatch will not read or replace."""


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _cannot(verb: str, path: str | os.PathLike[str], exc: OSError) -> HPatchError:
    return HPatchError(f"cannot {verb} {path_text(path)}: {exc.strerror or exc}")


def read_input(path: str | os.PathLike[str], limit: int, what: str = "file") -> bytes:
    """The bytes of the regular file at ``path``; refuses anything else, and files
    larger than ``limit`` bytes, before reading them."""
    shown = path_text(path)
    try:
        # stat first: opening a FIFO or a device can block or have side effects.
        before = os.stat(path)
    except OSError as exc:
        raise _cannot("read", path, exc) from exc
    if not stat.S_ISREG(before.st_mode):
        raise FileRefused(f"{shown} is {_kind(before.st_mode)}, not a regular {what} file")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        descriptor = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise _cannot("read", path, exc) from exc
    with os.fdopen(descriptor, "rb") as stream:
        # The path may have been swapped between stat and open: judge the open file.
        opened = os.fstat(stream.fileno())
        if not stat.S_ISREG(opened.st_mode):
            raise FileRefused(f"{shown} is {_kind(opened.st_mode)}, not a regular {what} file")
        if opened.st_size > limit:
            raise FileRefused(
                f"{shown} is {opened.st_size} bytes, over the {limit}-byte limit for a {what}"
            )
        try:
            data = stream.read(limit + 1)
        except OSError as exc:
            raise _cannot("read", path, exc) from exc
    if len(data) > limit:  # the file grew while it was read
        raise FileRefused(f"{shown} is over the {limit}-byte limit for a {what}")
    if not data:
        raise FileRefused(f"{shown} is an empty file, not a {what}")
    return data


def _identity(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def check_output(
    path: str | os.PathLike[str],
    inputs: Iterable[str | os.PathLike[str]] = (),
    *,
    force: bool = False,
) -> None:
    """Refuse ``path`` as an output if it is an input of the command, anything but a
    regular file, or (without ``force``) a file that exists."""
    shown = path_text(path)
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        found = None
    except OSError as exc:
        raise _cannot("write", path, exc) from exc
    if found is not None:
        if not stat.S_ISREG(found.st_mode):
            raise FileRefused(f"refusing to write {shown}: it is {_kind(found.st_mode)}")
        here = (found.st_dev, found.st_ino)
        for source in inputs:
            if _identity(source) == here:
                raise FileRefused(f"refusing to write {shown}: it is the input {path_text(source)}")
        if not force:
            raise FileRefused(f"{shown} exists; give --force to replace it")
    parent = os.path.dirname(os.fspath(path)) or os.curdir
    if not os.path.isdir(parent):
        raise HPatchError(f"cannot write {shown}: {path_text(parent)} is not a directory")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_output(
    path: str | os.PathLike[str],
    data: bytes,
    inputs: Iterable[str | os.PathLike[str]] = (),
    *,
    force: bool = False,
) -> None:
    """Write ``data`` to ``path`` whole or not at all (see the module docstring)."""
    inputs = list(inputs)
    check_output(path, inputs, force=force)
    parent = os.path.dirname(os.fspath(path)) or os.curdir
    try:
        # mkstemp: O_CREAT|O_EXCL|O_NOFOLLOW, a random name, mode 0600.
        descriptor, temporary = tempfile.mkstemp(prefix=".hpatch-", suffix=".tmp", dir=parent)
    except OSError as exc:
        raise _cannot("write", path, exc) from exc
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fchmod(stream.fileno(), 0o666 & ~_umask())
            os.fsync(stream.fileno())
        # Checked again just before the rename: the target may have changed meanwhile.
        check_output(path, inputs, force=force)
        if force:
            os.replace(temporary, path)
        else:
            # link refuses an existing target atomically, where a rename would replace it.
            try:
                os.link(temporary, path, follow_symlinks=False)
            except OSError as exc:
                if exc.errno == errno.EEXIST:
                    raise FileRefused(
                        f"{path_text(path)} exists; give --force to replace it"
                    ) from exc
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                    raise
                os.replace(temporary, path)  # a file system without hard links
    except OSError as exc:
        raise _cannot("write", path, exc) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    _sync_directory(parent)


def _sync_directory(directory: str) -> None:
    """Make the rename durable; not every platform can open a directory."""
    try:
        descriptor = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def create_exclusive(path: str | os.PathLike[str], data: bytes, mode: int) -> None:
    """Create ``path`` holding ``data``; fails if anything is there, even a dangling
    symbolic link (O_EXCL), and never follows one (O_NOFOLLOW)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    descriptor = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
    except BaseException:
        os.unlink(path)
        raise
