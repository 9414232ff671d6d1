"""Cases a campaign failed on (an unexpected exception, a hang, a crash, a slow or
memory-hungry input), kept in ``corpus/<campaign>/`` and replayed by test_corpus.py:
``<id>.bin`` holds the input, ``<id>.json`` the rest of the case and what went wrong."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .harness import Case

CORPUS = Path(__file__).resolve().parent / "corpus"


def save(case: Case, failure: str, root: Path = CORPUS) -> Path:
    """Store ``case`` (named by its content, so a case found twice is stored once)."""
    folder = root / case.campaign
    folder.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(case.context.encode() + b"\0" + case.data).hexdigest()[:16]
    (folder / f"{name}.bin").write_bytes(case.data)
    document = {"context": case.context, "how": case.how, "failure": failure}
    (folder / f"{name}.json").write_text(json.dumps(document, indent=1) + "\n")
    return folder / f"{name}.bin"


def load(path: Path) -> tuple[Case, str]:
    """The case stored at ``path`` (its .bin file) and the failure it was saved for."""
    document = json.loads(path.with_suffix(".json").read_text())
    case = Case(path.parent.name, document["context"], document["how"], path.read_bytes())
    return case, document["failure"]


def saved(root: Path = CORPUS) -> list[Path]:
    return sorted(root.glob("*/*.bin"))
