"""Servicing a release's pairs on a Dask distributed cluster (``--scheduler``).

The tasks are the local pool's: one per pair, run on a worker, plain data back to
the client, which signs and writes every output. So the outputs are the local run's,
byte for byte. Workers read the trees themselves, at the absolute paths the client
sees, so every worker needs the trees at the same path (a shared or replicated file
system) and the same hpatch installed.

A worker that dies mid-task is Dask's to handle: the scheduler gives its tasks to
other workers, up to ``distributed.scheduler.allowed-failures`` deaths per task (3 by
default), after which the task fails with ``KilledWorker``. A task that fails for good
becomes its binary's ``error``; the run goes on. Losing the scheduler, or every worker
for ``WORKER_TIMEOUT``, ends the run instead: its remaining tasks have nowhere to run.

Dask is an optional extra (``pip install 'hpatch[cluster]'``), imported only here and
only when a scheduler is given.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from concurrent.futures import CancelledError
from dataclasses import replace
from types import ModuleType
from typing import Any

from hpatch import BACKEND, __version__
from hpatch.errors import HPatchError
from hpatch.release.outcome import Outcome, Settings, Task, died_outcome, failed_outcome
from hpatch.release.pairing import Pair, TreeFile
from hpatch.text import plain

#: Seconds to reach the scheduler and to see a worker: a wrong address fails, never hangs.
CONNECT_TIMEOUT = 10.0
#: Seconds a run waits for a worker when the cluster has none left (a nanny restarts
#: a crashed worker in a few seconds; a lost machine does not come back).
WORKER_TIMEOUT = 60.0
#: Runs again of a task that raised (a worker's transient failure, such as a full disk).
RETRIES = 2
#: Seconds between looks for finished tasks, and between asking for the workers.
POLL = 0.05
WORKER_CHECK = 1.0
INSTALL_HINT = "pip install 'hpatch[cluster]'"


def import_distributed() -> ModuleType:
    """``dask.distributed``, or an HPatchError saying how to install it."""
    try:
        import distributed
    except ImportError as exc:
        raise HPatchError(
            f"--scheduler needs Dask distributed, which is not installed: {INSTALL_HINT}"
        ) from exc
    return distributed


def _probe(address: str, timeout: float) -> None:
    """Fail at once on a TCP address that refuses the connection (Dask's own connect
    retries it until its timeout ends), and within ``timeout`` on one that accepts but
    stays silent: a scheduler speaks first (its handshake), and Dask would wait for
    that handshake forever."""
    scheme, _, location = address.rpartition("://")
    if scheme not in ("", "tcp"):
        return  # tls://, ucx://, inproc://: Dask's to reach
    host, colon, port = location.rpartition(":")
    if not colon or not host or not port.isdigit():
        raise HPatchError(f"scheduler address {address!r} is not tcp://HOST:PORT")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as probe:
            spoke = probe.recv(1)
    except TimeoutError as exc:
        raise HPatchError(
            f"the Dask scheduler at {address} did not answer within {timeout:g} s"
        ) from exc
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise HPatchError(f"cannot reach the Dask scheduler at {address}: {reason}") from exc
    if not spoke:
        raise HPatchError(f"{address} closed the connection: it is not a Dask scheduler")


def worker_identity() -> tuple[str, str]:
    """What a worker runs: the hpatch version and backend (called on the workers)."""
    return __version__, BACKEND


def _check_workers(client: Any, address: str, timeout: float) -> None:
    """Refuse a cluster without workers (the tasks would wait forever) or with one
    that runs another hpatch (its packages could differ from this client's)."""
    try:
        client.wait_for_workers(1, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise HPatchError(
            f"no worker joined the Dask scheduler at {address} within {timeout:g} s"
        ) from exc
    try:
        identities: dict[str, tuple[str, str]] = client.run(worker_identity)
    except Exception as exc:  # unpickling hpatch's function failed: hpatch is missing there
        raise HPatchError(
            f"a worker of the Dask scheduler at {address} cannot run hpatch "
            f"({type(exc).__name__}: {plain(exc)}); workers need hpatch {__version__}"
        ) from exc
    for worker, (version, _) in sorted(identities.items()):
        if version != __version__:
            raise HPatchError(
                f"worker {worker} runs hpatch {version}, this client hpatch {__version__}"
            )


def _absolute(pair: Pair) -> Pair:
    """The pair with its files where a worker finds them, whatever its directory."""

    def resolve(side: TreeFile | None) -> TreeFile | None:
        return None if side is None else replace(side, location=os.path.abspath(side.location))

    return replace(pair, old=resolve(pair.old), new=resolve(pair.new))


def _remote(task: Task, pair: Pair, settings: Settings) -> tuple[str, Outcome]:
    """A task as a worker runs it, its result stamped with the worker's hpatch version
    (workers may join after the check at the start)."""
    return __version__, task(pair, settings)


def _outcome(distributed: ModuleType, future: Any, pair: Pair, scheduler: str) -> Outcome:
    """What a finished future brought back, as the pair's outcome."""
    try:
        version, outcome = future.result()
    except CancelledError as exc:
        # Nobody cancels this run's keys but a lost scheduler: the run has no future.
        reason = getattr(exc, "reason", None) or "cancelled"
        raise HPatchError(
            f"lost the Dask scheduler at {scheduler} mid-run ({reason}); nothing was written"
        ) from exc
    except distributed.KilledWorker:  # its message names a run's key and a worker
        return died_outcome(pair)
    except Exception as exc:  # the task raised on every try
        return failed_outcome(pair, exc)
    if version != __version__:
        mismatch = HPatchError(f"the worker runs hpatch {version}, not {__version__}")
        return failed_outcome(pair, mismatch)
    return outcome


def run_on_cluster(
    indices: list[int],
    pairs: list[Pair],
    settings: Settings,
    scheduler: str,
    task: Task,
    done: Callable[[int, Outcome], None],
    timeout: float = CONNECT_TIMEOUT,
    worker_timeout: float = WORKER_TIMEOUT,
) -> None:
    """Run ``task`` for the pairs at ``indices`` on the cluster whose scheduler is at
    ``scheduler``; ``done(index, outcome)`` as each finishes, in the order they finish.
    Raises HPatchError when Dask is missing, the cluster cannot be reached within
    ``timeout`` seconds, or it has had no worker for ``worker_timeout`` seconds."""
    distributed = import_distributed()
    _probe(scheduler, timeout)
    try:
        client = distributed.Client(scheduler, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise HPatchError(
            f"cannot connect to the Dask scheduler at {scheduler}: {plain(exc)}"
        ) from exc
    with client:
        _check_workers(client, scheduler, timeout)
        # Keys of this run only: other clients may share the cluster, and a key Dask
        # already holds would be taken as this task's result.
        run = uuid.uuid4().hex
        futures = {
            client.submit(
                _remote,
                task,
                _absolute(pairs[index]),
                settings,
                key=f"hpatch-release-{run}-{index}",
                retries=RETRIES,
            ): index
            for index in indices
        }
        finishing = distributed.as_completed(futures, loop=client.loop)
        workers_seen = checked = time.monotonic()
        while not finishing.is_empty():
            ready = finishing.next_batch(block=False)
            if not ready:
                # Polled, not blocked on: tasks wait for a worker forever, and a cluster
                # whose last worker left without a nanny to restart it has none.
                time.sleep(POLL)
                now = time.monotonic()
                if now - checked >= WORKER_CHECK:
                    checked = now
                    try:
                        workers = client.nthreads()
                    except OSError as exc:  # the scheduler went away between looks
                        raise HPatchError(
                            f"lost the Dask scheduler at {scheduler} mid-run ({plain(exc)}); "
                            "nothing was written"
                        ) from exc
                    if workers:
                        workers_seen = now
                    elif now - workers_seen >= worker_timeout:
                        raise HPatchError(
                            f"the Dask scheduler at {scheduler} has had no worker for "
                            f"{worker_timeout:g} s; nothing was written"
                        )
                continue
            for future in ready:
                index = futures[future]
                done(index, _outcome(distributed, future, pairs[index], scheduler))
                future.release()  # the worker may drop the result: the client holds it
