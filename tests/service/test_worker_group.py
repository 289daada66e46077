"""The worker group's shared files on their own: requests, refusals and late workers."""

from __future__ import annotations

import os

import pytest

from service.workers import WorkerGroup, WorkerState

PLAN_A = {"champion": "/models/a"}
PLAN_B = {"champion": "/models/b"}


def _group(tmp_path) -> WorkerGroup:
    return WorkerGroup(tmp_path, expected=1)


def test_a_change_refused_everywhere_is_handled_and_not_tried_again_by_a_late_worker(tmp_path):
    group = _group(tmp_path)
    me = os.getpid()
    group.announce(WorkerState(me, "a", "t5", 0))
    generation = group.request_rollout(PLAN_B)
    assert generation == 1
    # Every worker refused it, keeping plan A.
    group.announce(WorkerState(me, "a", "t5", generation, "format_version 99"))
    group.record_refused(generation, PLAN_A)
    served = group.serving()
    assert served is not None and served.generation == 1 and served.plan == PLAN_A
    # A worker started now loads A at generation 1: it is not behind, so the next change is
    # accepted at once rather than refused as "still running".
    group.announce(WorkerState(me, "a", "t5", served.generation))
    assert group.request_rollout(PLAN_B) == 2


def test_a_change_is_refused_while_a_worker_is_behind(tmp_path):
    group = _group(tmp_path)
    group.announce(WorkerState(os.getpid(), "a", "t5", 0))
    group.request_rollout(PLAN_B)
    with pytest.raises(RuntimeError, match="still running in worker"):
        group.request_rollout(PLAN_A)


def test_record_refused_never_moves_the_generation_back(tmp_path):
    group = _group(tmp_path)
    group.record_serving(PLAN_B, 5)
    group.record_refused(3, PLAN_A)
    served = group.serving()
    assert served is not None and served.generation == 5 and served.plan == PLAN_B
