"""Independent pieces of the report's statistics (each model's intervals, each paired test) run side by side in
forked worker processes, one per core.

A piece is a function of no arguments. The workers are forked after the list of pieces is made, so they inherit
it, and the per-document values its pieces close over, without pickling; only the results travel back, in the
order of the list. Every piece seeds its own generator, so a result does not depend on which worker ran it or
when. Fork is used on Linux only (macOS' system libraries are not fork-safe, Windows has no fork); elsewhere, or
with one core, the pieces run in this process, one by one.

Pieces must be numpy and scipy work: a forked child that calls into torch (or anything else using OpenMP) after
the parent ran torch's thread pool can hang, as the in-process demo's parent has.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
_pieces: Sequence[Callable[[], object]] = ()  # what the forked workers inherit
_one_at_a_time = threading.Lock()  # so two threads' calls never hand their workers each other's pieces


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _run_piece(index: int):
    return _pieces[index]()


def run_all(pieces: Sequence[Callable[[], T]], desc: str, workers: int | None = None) -> list[T]:
    """[piece() for piece in pieces], computed by up to `workers` (default: every core) forked processes."""
    global _pieces
    workers = min(len(pieces), workers or available_cores())
    if workers < 2 or not sys.platform.startswith("linux"):
        return [piece() for piece in tqdm(pieces, desc=desc, disable=None)]
    with _one_at_a_time:
        _pieces = pieces
        try:
            with warnings.catch_warnings():
                # Python 3.12+ warns about fork in a process with threads (torch's, in the in-process demo); the
                # workers only run numpy on inherited data, and take no lock those threads could hold.
                warnings.filterwarnings("ignore", message=".*use of fork\\(\\) may lead to deadlocks.*")
                with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
                    chunk = max(1, len(pieces) // (16 * workers))
                    results = pool.map(_run_piece, range(len(pieces)), chunksize=chunk)
                    return list(tqdm(results, total=len(pieces), desc=desc, disable=None))
        finally:
            _pieces = ()
