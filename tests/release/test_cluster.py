"""``hpatch release`` on a real Dask cluster: a scheduler and two worker processes on
localhost, against the local pool's outputs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import distributed
import pytest

import hpatch
from hpatch.errors import HPatchError
from hpatch.package import BuildOptions
from hpatch.package.signing import generate_key, load_private_key
from hpatch.release import Outcome, Pair, Settings, pair_trees, run_release, service_pair
from hpatch.release.cluster import run_on_cluster, worker_identity
from hpatch.release.run import Task, run_pairs

from ..conftest import REPO
from .test_release import EXPECTED, _copy, make_trees, outputs, run, servicing_args

# A cluster that stops answering fails its test instead of holding up the suite.
pytestmark = pytest.mark.timeout(120)

SETTINGS = Settings(BuildOptions(2, (1, 1), "", "CVE-2026-0001"), inputs=5)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[distributed.LocalCluster]:
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=":0",
        local_directory=str(tmp_path_factory.mktemp("dask")),
    ) as local_cluster:
        yield local_cluster


@pytest.fixture(scope="module")
def release_trees(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("cluster-release")
    old, new = make_trees(root)
    generate_key(root / "release.key")
    return root, old, new


def release(trees: tuple[Path, Path, Path], out: Path, scheduler: str | None, jobs: int = 2) -> int:
    root, old, new = trees
    result = run_release(
        str(old),
        str(new),
        str(out),
        SETTINGS,
        jobs=jobs,
        key=load_private_key(str(root / "release.key")),
        scheduler=scheduler,
    )
    return sum(1 for b in result.document["binaries"] if b["status"] == "error")


@pytest.fixture(scope="module")
def local_outputs(
    release_trees: tuple[Path, Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("local") / "release"
    release(release_trees, out, None)
    return outputs(out)


def test_cluster_release_matches_the_local_run(
    capsys: pytest.CaptureFixture[str],
    cluster: distributed.LocalCluster,
    release_trees: tuple[Path, Path, Path],
    local_outputs: dict[str, bytes],
    tmp_path: Path,
) -> None:
    with distributed.Client(cluster, set_as_default=False) as client:
        # The workers run this hpatch on this backend: HPATCH_PURE_PYTHON reached them.
        identities = client.run(worker_identity)
    assert sorted(identities.values()) == [(hpatch.__version__, hpatch.BACKEND)] * 2
    out = tmp_path / "release"
    code, _, err = run(
        capsys,
        *servicing_args(release_trees, out),
        "--scheduler",
        cluster.scheduler_address,
    )
    assert code == 1  # broken.dll is an error; the run went on
    assert "broken.dll: error" in err  # progress, one line per binary, from the client
    got = outputs(out)
    assert sorted(got) == sorted(local_outputs)
    assert got == local_outputs  # manifest, signature and every package, byte for byte
    assert "packages/arm64/core.dll.hpk" in got and "packages/X64/Core.DLL.hpk" in got
    assert (out / "timings.json").is_file()  # timings: written, and outside the signed part


class KillOnce(distributed.WorkerPlugin):
    """Kills the worker process that starts the task of one pair, once per run (the
    marker file says it happened), as a machine lost mid-task would."""

    name = "hpatch-test-kill-once"

    def __init__(self, suffix: str, marker: str) -> None:
        self.suffix = suffix
        self.marker = marker

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if finish != "executing" or not str(key).endswith(self.suffix):
            return
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return  # killed once already: the retry runs to its end
        os.kill(os.getpid(), signal.SIGKILL)


def test_a_worker_killed_mid_run_loses_nothing(
    cluster: distributed.LocalCluster,
    release_trees: tuple[Path, Path, Path],
    local_outputs: dict[str, bytes],
    tmp_path: Path,
) -> None:
    _, old, new = release_trees
    paths = [p.path for p in pair_trees(str(old), str(new))]
    assert paths == list(EXPECTED)
    marker = tmp_path / "killed"
    plugin = KillOnce(f"-{paths.index('arm64/core.dll')}", str(marker))
    with distributed.Client(cluster, set_as_default=False) as client:
        client.register_plugin(plugin)
        try:
            out = tmp_path / "release"
            assert release(release_trees, out, cluster.scheduler_address) == 1
        finally:
            client.unregister_worker_plugin(KillOnce.name)
        assert marker.exists()  # a worker did die, running a pair that gets packaged
        client.wait_for_workers(2, timeout=30)  # the nanny restarts it for the next test
    assert outputs(out) == local_outputs


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_unreachable_scheduler_fails_fast(
    capsys: pytest.CaptureFixture[str], release_trees: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    address = f"tcp://127.0.0.1:{unused_port()}"
    out = tmp_path / "release"
    started = time.monotonic()
    code, _, err = run(capsys, *servicing_args(release_trees, out), "--scheduler", address)
    assert time.monotonic() - started < 5
    assert code == 1 and f"Dask scheduler at {address}" in err
    assert "Traceback" not in err
    assert not out.exists()  # nothing written
    code, printed, _ = run(
        capsys, *servicing_args(release_trees, out), "--scheduler", address, "--json"
    )
    assert code == 1 and address in json.loads(printed)["error"]["message"]


def test_a_silent_listener_is_no_scheduler_and_no_hang(tmp_path: Path) -> None:
    # It accepts the connection and never answers: Dask alone would wait forever.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(HPatchError, match=f"scheduler at {address} did not answer"):
            run_on_cluster([], [], SETTINGS, address, service_pair, lambda *_: None, timeout=1)
        assert time.monotonic() - started < 5


def test_without_dask_the_error_says_how_to_install_it(
    capsys: pytest.CaptureFixture[str],
    release_trees: tuple[Path, Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed: ImportError
    out = tmp_path / "release"
    code, _, err = run(
        capsys, *servicing_args(release_trees, out), "--scheduler", "tcp://127.0.0.1:8786"
    )
    assert code == 1 and "pip install 'hpatch[cluster]'" in err
    assert not out.exists()


def test_a_local_release_does_not_import_dask() -> None:
    code = (
        "import sys, hpatch.cli, hpatch.release, hpatch.release.api; "
        "found = [m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')]; "
        "sys.exit(f'imported: {found}' if found else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def raise_on_broken(pair: Pair, settings: Settings) -> Outcome:
    """A task that fails on one pair wherever it runs, as a bug would."""
    if pair.path == "broken.dll":
        raise RuntimeError("a bug")
    return service_pair(pair, settings)


def die_on_broken(pair: Pair, settings: Settings) -> Outcome:
    """A task that kills every worker that runs one pair."""
    if pair.path == "broken.dll":
        os._exit(70)
    return service_pair(pair, settings)


def hang_on_broken(pair: Pair, settings: Settings) -> Outcome:
    """A task that says it started, then outlives any test."""
    if pair.path == "broken.dll":
        Path(os.environ["HPATCH_TEST_STARTED"]).touch()
        time.sleep(600)
    return service_pair(pair, settings)


@pytest.mark.parametrize(
    ("task", "error"),
    [
        (raise_on_broken, "the worker servicing it failed: RuntimeError: a bug"),
        (die_on_broken, "the worker process servicing it died"),  # as the local pool says
    ],
)
def test_a_task_that_always_fails_is_its_binarys_error(
    cluster: distributed.LocalCluster, tmp_path: Path, task: Task, error: str
) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    for tree in (old, new):
        _copy("x64-gcc", "v1", tree / "same.dll")
    _copy("x64-gcc", "v1", old / "broken.dll")
    _copy("x64-gcc", "v2", new / "broken.dll")
    _copy("x64-gcc", "v3", new / "fresh.dll")
    pairs = pair_trees(str(old), str(new))
    outcomes = run_pairs(pairs, SETTINGS, 1, task=task, scheduler=cluster.scheduler_address)
    entries = {p.path: o.entry for p, o in zip(pairs, outcomes, strict=True)}
    assert {path: e["status"] for path, e in entries.items()} == {
        "broken.dll": "error",
        "fresh.dll": "added",
        "same.dll": "unchanged",
    }
    assert entries["broken.dll"]["error"] == error


def test_a_cluster_left_without_workers_fails_the_run(tmp_path: Path) -> None:
    # One worker without a nanny: when a task kills it, nothing restarts it, and the
    # tasks would wait for a worker forever.
    old, new = tmp_path / "old", tmp_path / "new"
    _copy("x64-gcc", "v1", old / "broken.dll")
    _copy("x64-gcc", "v2", new / "broken.dll")
    pairs = pair_trees(str(old), str(new))
    with (
        distributed.LocalCluster(n_workers=0, host="127.0.0.1", dashboard_address=":0") as empty,
        distributed.Client(empty, set_as_default=False) as client,
    ):
        worker = subprocess.Popen(
            [
                *(sys.executable, "-m", "distributed.cli.dask_worker", empty.scheduler_address),
                *("--no-nanny", "--nthreads", "1", "--local-directory", str(tmp_path / "dask")),
            ],
            cwd=REPO,  # the worker imports this module's tasks
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            client.wait_for_workers(1, timeout=60)
            started = time.monotonic()
            with pytest.raises(HPatchError, match="has had no worker for 1 s"):
                run_on_cluster(
                    [0],
                    pairs,
                    SETTINGS,
                    empty.scheduler_address,
                    die_on_broken,
                    lambda *_: None,
                    worker_timeout=1,
                )
            assert time.monotonic() - started < 10
            assert worker.wait(timeout=10) == 70  # the task killed it
        finally:
            worker.kill()
            worker.wait()


def test_a_lost_scheduler_fails_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    _copy("x64-gcc", "v1", old / "broken.dll")
    _copy("x64-gcc", "v2", new / "broken.dll")
    pairs = pair_trees(str(old), str(new))
    started = tmp_path / "started"
    monkeypatch.setenv("HPATCH_TEST_STARTED", str(started))  # before the workers start
    cluster = distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        host="127.0.0.1",
        dashboard_address=":0",
        local_directory=str(tmp_path / "dask"),
    )

    def close_when_started() -> None:
        deadline = time.monotonic() + 60
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        cluster.close()

    closer = threading.Thread(target=close_when_started)
    closer.start()
    try:
        with pytest.raises(HPatchError, match=r"lost the Dask scheduler at .* nothing was written"):
            run_on_cluster(
                [0], pairs, SETTINGS, cluster.scheduler_address, hang_on_broken, lambda *_: None
            )
    finally:
        closer.join()
        cluster.close()
    assert started.exists()
