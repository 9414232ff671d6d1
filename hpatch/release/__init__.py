"""Servicing a whole release: every PE file of two release trees, paired by path.

``run_release`` pairs the trees (``pairing``), services each pair as ``hpatch diff -o``
would on a local process pool (``run``), and writes the packages and a signed
manifest (``manifest``); ``check_release`` holds a written release to its manifest.
"""

from hpatch.release.api import ReleaseResult, run_release
from hpatch.release.manifest import (
    CHECK_SCHEMA,
    RELEASE_SCHEMA,
    ReleaseCheck,
    check_release,
)
from hpatch.release.outcome import Outcome, Settings, Status
from hpatch.release.pairing import Pair, TreeFile, pair_trees
from hpatch.release.run import default_jobs, service_pair

__all__ = [
    "CHECK_SCHEMA",
    "RELEASE_SCHEMA",
    "Outcome",
    "Pair",
    "ReleaseCheck",
    "ReleaseResult",
    "Settings",
    "Status",
    "TreeFile",
    "check_release",
    "default_jobs",
    "pair_trees",
    "run_release",
    "service_pair",
]
