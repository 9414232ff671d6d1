"""Function-granularity diff of two PE images: fingerprints, matching, classification."""

from hpatch.blockers import Blocker, BlockerKind
from hpatch.diff.api import DiffResult, diff_images
from hpatch.diff.classify import FunctionChange, Status
from hpatch.diff.fingerprint import FunctionFingerprint, fingerprint_function, fingerprint_image
from hpatch.diff.match import Match, MatchRule

__all__ = [
    "Blocker",
    "BlockerKind",
    "DiffResult",
    "FunctionChange",
    "FunctionFingerprint",
    "Match",
    "MatchRule",
    "Status",
    "diff_images",
    "fingerprint_function",
    "fingerprint_image",
]
