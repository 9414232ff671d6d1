"""The PE image model: parse once, immutable, arch-neutral."""

from hpatch.image.model import (
    BaseRelocation,
    BaseRelocationType,
    DataKind,
    DataRange,
    Evidence,
    Export,
    Fragment,
    Function,
    ImageIdentity,
    Import,
    LoadConfig,
    Section,
    SectionFlags,
    Symbol,
    TlsInfo,
)
from hpatch.image.reader import PEImage, load_image

__all__ = [
    "BaseRelocation",
    "BaseRelocationType",
    "DataKind",
    "DataRange",
    "Evidence",
    "Export",
    "Fragment",
    "Function",
    "ImageIdentity",
    "Import",
    "LoadConfig",
    "PEImage",
    "Section",
    "SectionFlags",
    "Symbol",
    "TlsInfo",
    "load_image",
]
