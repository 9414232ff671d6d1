"""The command line's readers: every input file is checked and size-capped the same way."""

from __future__ import annotations

import os

from hpatch.errors import HPatchError
from hpatch.files import MAX_IMAGE_FILE, read_input
from hpatch.image import PEImage, load_image
from hpatch.text import file_name, path_text


def read_image(path: str | os.PathLike[str]) -> PEImage:
    """The PE image in the regular file at ``path`` (at most MAX_IMAGE_FILE bytes),
    named by its file name decoded as ``hpatch.text.file_name`` decodes it."""
    try:
        return load_image(read_input(path, MAX_IMAGE_FILE, "PE image"), name=file_name(path))
    except HPatchError as error:
        error.file = path_text(path)
        raise


def read_package_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of the package file at ``path`` (at most MAX_PACKAGE_SIZE bytes)."""
    from hpatch.package.format import MAX_PACKAGE_SIZE  # the codec, only when it is needed

    try:
        return read_input(path, MAX_PACKAGE_SIZE, "package")
    except HPatchError as error:
        error.file = path_text(path)
        raise
