"""The robot's record: what survives a restart, and the rules that keep a resent delivery from
running twice."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from roz_robot.record import RECORD_FILE, ItemKind, Record

HOST = "7d7f3b2e-0c7e-4a53-9d8e-000000000001"
OTHER_HOST = "7d7f3b2e-0c7e-4a53-9d8e-000000000002"
COMMAND = ItemKind.COMMAND
TASK = ItemKind.TASK


@pytest.fixture
def record(tmp_path: Path) -> Iterator[Record]:
    opened = Record.open(tmp_path / "state")
    yield opened
    opened.close()


def reopen(record: Record) -> Record:
    record.close()
    return Record.open(record.path.parent)


def test_a_new_record_knows_nothing(record: Record) -> None:
    assert record.last_sequence(HOST) == 0
    assert record.bound_host("digest") == ""
    assert record.item(COMMAND, "c1") is None
    assert record.unanswered() == []


def test_the_directory_is_private(tmp_path: Path) -> None:
    Record.open(tmp_path / "state").close()
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "state" / RECORD_FILE).is_file()


def test_sequences_and_outcomes_survive_reopening(record: Record) -> None:
    assert record.receive(HOST, 1, COMMAND, "c1") is None
    assert record.receive(HOST, 2, TASK, "t1") is None
    assert record.finish(COMMAND, "c1", "COMPLETED", result={"distance": 1.5}, report_id="r1")
    record.bind_host("digest", HOST)

    record = reopen(record)
    try:
        assert record.last_sequence(HOST) == 2
        assert record.last_sequence(OTHER_HOST) == 0
        assert record.bound_host("digest") == HOST
        done = record.item(COMMAND, "c1")
        assert done is not None
        assert (done.finished, done.state, dict(done.result), done.report_id, done.answered) == (
            True,
            "COMPLETED",
            {"distance": 1.5},
            "r1",
            False,
        )
        running = record.item(TASK, "t1")
        assert running is not None
        assert (running.finished, running.state) == (False, "RECEIVED")
    finally:
        record.close()


def test_the_sequence_never_goes_back_on_a_resend(record: Record) -> None:
    record.receive(HOST, 5, COMMAND, "c5")
    record.receive(HOST, 3, COMMAND, "c3")  # a resend of an older delivery
    assert record.last_sequence(HOST) == 5
    record.acknowledge(HOST, 4)
    assert record.last_sequence(HOST) == 5
    # …unless the server says so: it resumes after what it has, below what we hold.
    record.rewind(HOST, 2)
    assert record.last_sequence(HOST) == 2


def test_a_resent_item_comes_back_as_it_was_known(record: Record) -> None:
    record.receive(HOST, 1, COMMAND, "c1")
    again = record.receive(HOST, 1, COMMAND, "c1")
    assert again is not None
    assert not again.finished
    record.finish(COMMAND, "c1", "FAILED", reason="gripper jammed", report_id="r1")
    finished = record.receive(HOST, 2, COMMAND, "c1")
    assert finished is not None
    assert (finished.state, finished.reason) == ("FAILED", "gripper jammed")
    # Command and task ids live apart.
    assert record.receive(HOST, 3, TASK, "c1") is None


def test_a_cancellation_wins_over_a_later_finish(record: Record) -> None:
    record.receive(HOST, 1, COMMAND, "c1")
    before = record.cancel(HOST, 2, COMMAND, "c1", "operator said stop")
    assert before is not None
    assert not before.finished
    assert not record.finish(COMMAND, "c1", "COMPLETED", report_id="late")
    item = record.item(COMMAND, "c1")
    assert item is not None
    assert (item.state, item.reason, item.answered) == ("CANCELLED", "operator said stop", True)
    assert record.last_sequence(HOST) == 2
    assert record.unanswered() == []


def test_a_finish_wins_over_a_later_cancellation(record: Record) -> None:
    record.receive(HOST, 1, COMMAND, "c1")
    assert record.finish(COMMAND, "c1", "COMPLETED", report_id="r1")
    before = record.cancel(HOST, 2, COMMAND, "c1", "too late")
    assert before is not None
    assert before.state == "COMPLETED"
    item = record.item(COMMAND, "c1")
    assert item is not None
    assert item.state == "COMPLETED"


def test_a_cancellation_of_an_unseen_item_keeps_it_from_running_later(record: Record) -> None:
    assert record.cancel(HOST, 1, TASK, "t9", "cancelled") is None
    arriving = record.receive(HOST, 2, TASK, "t9")
    assert arriving is not None
    assert (arriving.finished, arriving.state) == (True, "CANCELLED")


def test_an_ending_learned_from_the_server_is_not_reported_back(record: Record) -> None:
    record.receive(HOST, 1, COMMAND, "c1")
    record.end_by_server(HOST, COMMAND, "c1", "TIMED_OUT", "too slow")
    item = record.item(COMMAND, "c1")
    assert item is not None
    assert (item.state, item.answered) == ("TIMED_OUT", True)
    assert record.unanswered() == []


def test_interrupted_items_become_failed_and_wait_to_be_reported(record: Record) -> None:
    record.receive(HOST, 1, COMMAND, "c1")
    record.receive(HOST, 2, TASK, "t1")
    record.receive(HOST, 3, COMMAND, "c3")
    record.finish(COMMAND, "c3", "COMPLETED", report_id="r3")

    failed = reopen(record)
    try:
        interrupted = failed.fail_interrupted("the robot restarted")
        assert [(i.kind, i.item_id, i.state) for i in interrupted] == [
            (COMMAND, "c1", "FAILED"),
            (TASK, "t1", "FAILED"),
        ]
        assert failed.fail_interrupted("again") == []
        assert {(i.item_id, i.state, i.reason) for i in failed.unanswered()} == {
            ("c1", "FAILED", "the robot restarted"),
            ("t1", "FAILED", "the robot restarted"),
            ("c3", "COMPLETED", ""),
        }
        failed.mark_answered(COMMAND, "c3")
        assert {i.item_id for i in failed.unanswered()} == {"c1", "t1"}
    finally:
        failed.close()


def test_finish_records_only_a_terminal_state(record: Record) -> None:
    record.receive(HOST, 1, COMMAND, "c1")
    with pytest.raises(ValueError, match="terminal"):
        record.finish(COMMAND, "c1", "RECEIVED")


def test_answered_outcomes_are_forgotten_after_the_cutoff(record: Record) -> None:
    record.receive(HOST, 1, COMMAND, "old")
    record.finish(COMMAND, "old", "COMPLETED")
    record.mark_answered(COMMAND, "old")
    record.receive(HOST, 2, COMMAND, "unanswered")
    record.finish(COMMAND, "unanswered", "COMPLETED")
    record.receive(HOST, 3, COMMAND, "running")
    assert record.forget_before(cutoff=1e12) == 1
    assert record.item(COMMAND, "old") is None
    assert record.item(COMMAND, "unanswered") is not None
    assert record.item(COMMAND, "running") is not None
    assert record.last_sequence(HOST) == 3


def test_a_record_of_a_newer_schema_is_refused(tmp_path: Path) -> None:
    Record.open(tmp_path).close()
    with sqlite3.connect(tmp_path / RECORD_FILE) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(RuntimeError, match="newer roz-robot"):
        Record.open(tmp_path)
