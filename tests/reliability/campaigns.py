"""The fuzz campaigns by name, for the isolating runner and the corpus replay."""

from __future__ import annotations

from . import image_campaigns, package_campaigns
from .harness import Campaign

TARGETS = ("package-reader", "package-applier", "image-reader", "image-loader")


def campaign(name: str, with_corpus: bool = False) -> Campaign:
    """The campaign ``name``; the image campaigns also mutate the real-world corpus's
    smaller binaries ``with_corpus``."""
    if name == "package-reader":
        return package_campaigns.READER
    if name == "package-applier":
        return package_campaigns.APPLIER
    if name == "image-reader":
        return image_campaigns.reader(with_corpus)
    if name == "image-loader":
        return image_campaigns.loader(with_corpus)
    raise ValueError(f"no campaign named {name}")
