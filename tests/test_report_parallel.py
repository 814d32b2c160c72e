"""The report's statistics run side by side in forked processes: the pieces really run in other processes,
come back in the order given, and equal what one process computes."""

import functools
import os
import sys
import time

import numpy as np
import pytest

from compress.report import parallel, significance

forks_workers = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="report workers fork on Linux only")


def _which_process(i: int) -> tuple[int, int]:
    time.sleep(0.02)  # long enough that both workers get pieces
    return i, os.getpid()


@forks_workers
def test_pieces_run_in_two_forked_workers_and_come_back_in_order():
    results = parallel.run_all([functools.partial(_which_process, i) for i in range(40)], "test", workers=2)
    assert [i for i, _ in results] == list(range(40))
    workers = {pid for _, pid in results}
    assert len(workers) == 2 and os.getpid() not in workers


def test_one_worker_runs_the_pieces_here():
    results = parallel.run_all([functools.partial(_which_process, i) for i in range(3)], "test", workers=1)
    assert results == [(0, os.getpid()), (1, os.getpid()), (2, os.getpid())]


@forks_workers
def test_paired_tests_in_workers_equal_the_same_tests_in_one_process():
    rng = np.random.default_rng(0)
    pairs = [(rng.normal(size=50).tolist(), rng.normal(size=50).tolist()) for _ in range(6)]
    pieces = [functools.partial(significance.paired_comparisons, a, b, significance.MEAN, 500, seed=0)
              for a, b in pairs]
    assert parallel.run_all(pieces, "test", workers=2) == [piece() for piece in pieces]
