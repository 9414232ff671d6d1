"""The image campaigns: hostile PE files against the reader (the whole model,
functions included) and against the loader of an emulated process (mapping,
relocation, import binding, the unwind table, a stack walk through the image's
own unwind data, and its entry point under a step budget)."""

from __future__ import annotations

import random
from functools import cache
from pathlib import Path

from hpatch.apply.safety import Range, busy_threads
from hpatch.emu import Process, ThreadState
from hpatch.errors import HPatchError, ImageFormatError, UnsupportedError
from hpatch.image import PEImage, load_image

from ..apply.support import IMAGE, REBASED
from ..conftest import SAMPLES, VERSIONS, corpus_binaries
from .harness import Campaign, Case
from .image_mutations import mutate_image
from .samples import BUILDS

#: Instructions the entry point of a hostile image may run before it is stopped.
ENTRY_STEPS = 200_000
#: Corpus binaries larger than this are left out: a case must take well under a second.
CORPUS_LIMIT = 512 << 10


def sources(with_corpus: bool) -> tuple[str, ...]:
    """The images mutations start from: every sample build and version, and the
    smaller real-world (MSVC) binaries when the corpus is fetched and asked for."""
    found = [f"{build}/{version}" for build in BUILDS for version in VERSIONS]
    if with_corpus:
        found += [
            str(path)
            for _pair, _arch, path in corpus_binaries()
            if path.stat().st_size <= CORPUS_LIMIT
        ]
    return tuple(found)


@cache
def source_bytes(source: str) -> bytes:
    if source.startswith("/"):
        return Path(source).read_bytes()
    return (SAMPLES / source / IMAGE).read_bytes()


def _make(campaign: str, rng: random.Random, with_corpus: bool) -> Case:
    source = rng.choice(sources(with_corpus))
    data, how = mutate_image(source_bytes(source), rng)
    return Case(campaign, source, how, data)


def load_fully(data: bytes) -> PEImage:
    """Everything a command reads of an image, functions included."""
    image = load_image(data, "sample.dll")
    assert image.functions is not None
    if image.entry_rva:
        image.function_at(image.entry_rva)
    return image


def run_reader(case: Case) -> str:
    try:
        load_fully(case.data)
    except (ImageFormatError, UnsupportedError):
        return "refused"
    return "accepted"


def make_loader_case(rng: random.Random, with_corpus: bool = False) -> Case:
    """A mutant the reader accepts, most of the time: the loader's input."""
    case = _make("image-loader", rng, with_corpus)
    for _ in range(20):
        try:
            load_image(case.data, "sample.dll")
        except HPatchError:
            case = _make("image-loader", rng, with_corpus)
            continue
        break
    return case


def run_loader(case: Case) -> str:
    """Load (at the preferred base or rebased), walk a stopped thread's stack through
    the image's unwind data, run the entry point: any hpatch error is a refusal (the
    image's code may fault), nothing else may escape."""
    try:
        image = load_fully(case.data)
    except (ImageFormatError, UnsupportedError):
        return "refused by the reader"
    rng = random.Random(case.data)
    directory = (
        SAMPLES / case.context if not case.context.startswith("/") else Path(case.context).parent
    )
    process = Process(image.identity.machine, search_path=[directory])
    try:
        module = process.load_image(
            image, base=rng.choice((None, REBASED)), name="sample.dll", run_entry_point=False
        )
        if not image.entry_rva:
            return "loaded"
        thread = process.new_thread()
        process.cpu.start(thread, module.va(image.entry_rva), (module.base, 1, 0))
        if process.cpu.run(thread, rng.randrange(1, 2000)) == ThreadState.STOPPED:
            busy_threads(process, [], [Range(module.base, module.end, "the image")])
            process.cpu.run(thread, ENTRY_STEPS)
    except HPatchError as error:
        return f"refused ({type(error).__name__})"
    return "loaded"


def reader(with_corpus: bool = False) -> Campaign:
    return Campaign("image-reader", lambda rng: _make("image-reader", rng, with_corpus), run_reader)


def loader(with_corpus: bool = False) -> Campaign:
    return Campaign("image-loader", lambda rng: make_loader_case(rng, with_corpus), run_loader)
