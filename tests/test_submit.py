"""``lrtkit submit`` and :mod:`lrtkit.submit` on the local broker and file storage."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from lrtkit.broker import Broker, Message
from lrtkit.brokers.local import LocalBroker
from lrtkit.errors import PublishError
from lrtkit.jobs import JobState, parse_body
from lrtkit.storage import layout
from lrtkit.submit import Row, infer_cell, read_jobs, submit, validate_rows
from tests.cli_env import CliEnv

DEMO_HANDLER = "lrtkit.demo.handler:sum_job"


class Env(CliEnv):
    """A fresh local queue and file storage, the CLI pointed at them."""

    def write(self, name: str, text: str) -> str:
        path = self.tmp / name
        path.write_text(text)
        return str(path)

    def bodies(self) -> dict[str, dict[str, Any]]:
        """Take every waiting message off the queue (acking it) and return the bodies by id."""
        out = {}
        while (delivery := self.broker.receive(0)) is not None:
            job_id, payload = parse_body(delivery.body)
            out[job_id] = payload
            self.broker.ack(delivery)
        return out


@pytest.fixture
def lrt(tmp_path: Path) -> Any:
    env = Env(tmp_path)
    yield env
    env.broker.close()


def csv_text(rows: Sequence[Sequence[object]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


# -- all or nothing ------------------------------------------------------------------------------


def test_one_bad_row_in_a_thousand_submits_nothing_and_names_the_line(lrt: Env) -> None:
    rows: list[list[object]] = [["job_id", "steps"]]
    rows += [[f"job-{i}", 600] for i in range(1000)]
    rows[734] = ["job 733!", 600]  # file line 735 (the header is line 1)
    path = lrt.write("jobs.csv", csv_text(rows))

    result = lrt.cli("submit", path)

    assert result.exit_code == 2, result.output
    assert "line 735" in result.stderr
    assert "'job 733!'" in result.stderr
    assert "nothing was submitted" in result.stderr
    assert "Traceback" not in result.output
    assert lrt.broker.depth().waiting == 0
    assert lrt.store.list_records() == []


def test_payload_model_errors_name_line_and_field_and_block_everything(lrt: Env) -> None:
    path = lrt.write(
        "jobs.csv", csv_text([["job_id", "steps"], ["a", 5], ["b", "lots"], ["c", -1], ["d", 7]])
    )

    result = lrt.cli("submit", path, "--handler", DEMO_HANDLER)

    assert result.exit_code == 2
    assert "line 3:" in result.stderr
    assert "steps" in result.stderr
    assert "line 4:" in result.stderr
    assert "greater than 0" in result.stderr
    assert "line 2:" not in result.stderr
    assert lrt.broker.depth().waiting == 0


def test_skip_invalid_submits_the_good_rows_only(lrt: Env) -> None:
    path = lrt.write("jobs.csv", csv_text([["job_id", "steps"], ["a", 5], ["b", "lots"], ["c", 7]]))

    result = lrt.cli("submit", path, "--handler", DEMO_HANDLER, "--skip-invalid")

    assert result.exit_code == 0, result.output
    assert "submitted 2" in result.stdout
    assert "skipped 1 invalid" in result.stdout
    bodies = lrt.bodies()
    # With a model the cells are converted by it: the body carries numbers, not text.
    assert bodies == {"a": {"steps": 5}, "c": {"steps": 7}}


def test_duplicate_ids_in_the_file_are_bad_rows(lrt: Env) -> None:
    path = lrt.write(
        "jobs.jsonl",
        '{"job_id": "x", "steps": 1}\n\n{"job_id": "y", "steps": 2}\n{"job_id": "x", "steps": 3}\n',
    )

    result = lrt.cli("submit", path)

    assert result.exit_code == 2
    assert "line 4: job_id 'x' repeats line 1" in result.stderr
    assert lrt.broker.depth().waiting == 0


def test_jsonl_rows_without_job_id_get_a_uuid_and_bad_json_is_located(lrt: Env) -> None:
    good = lrt.write("good.jsonl", '{"steps": 3}\n{"steps": 4, "job_id": "mine"}\n')
    result = lrt.cli("submit", good, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert len(summary["submitted"]) == 2
    assert "mine" in summary["submitted"]
    made = next(j for j in summary["submitted"] if j != "mine")
    assert len(made) == 36  # a UUID
    assert lrt.store.get(made) is not None

    bad = lrt.write("bad.jsonl", '{"steps": 3}\n{"steps": \n[1, 2]\n')
    result = lrt.cli("submit", bad)
    assert result.exit_code == 2
    assert "line 2: not valid JSON" in result.stderr
    assert "line 3: must be a JSON object, got list" in result.stderr


def test_stdin_is_sniffed_or_told_its_format(lrt: Env) -> None:
    result = lrt.cli("submit", "-", input='{"job_id": "s1", "steps": 1}\n')
    assert result.exit_code == 0, result.output
    result = lrt.cli("submit", "-", "--format", "csv", input="job_id,steps\ns2,2\n")
    assert result.exit_code == 0, result.output
    assert set(lrt.bodies()) == {"s1", "s2"}


def test_csv_without_a_model_converts_plain_numbers_and_booleans_only(lrt: Env) -> None:
    path = lrt.write(
        "jobs.csv",
        csv_text(
            [
                ["job_id", "steps", "rate", "zip", "flag", "name", "note"],
                ["a", "600", "0.5", "007", "true", "x", ""],
            ]
        ),
    )
    assert lrt.cli("submit", path).exit_code == 0
    assert lrt.bodies()["a"] == {"steps": 600, "rate": 0.5, "zip": "007", "flag": True, "name": "x"}

    path2 = lrt.write("jobs2.csv", "job_id,steps\nb,600\n")
    assert lrt.cli("submit", path2, "--strings").exit_code == 0
    assert lrt.bodies()["b"] == {"steps": "600"}


def test_infer_cell_follows_json_number_syntax() -> None:
    assert infer_cell("12") == 12
    assert infer_cell("-3") == -3
    assert infer_cell("1e3") == 1000.0
    assert infer_cell("+1") == "+1"
    assert infer_cell("01") == "01"
    assert infer_cell("1.") == "1."
    assert infer_cell("1e999") == "1e999"  # would be Infinity, which JSON does not have
    assert infer_cell("True") == "True"
    assert infer_cell("false") is False


def test_csv_structure_errors(lrt: Env) -> None:
    path = lrt.write("jobs.csv", "job_id,steps\na,1\nb,2,3\n\nc\n")
    result = lrt.cli("submit", path)
    assert result.exit_code == 2
    assert "line 3: has 3 field(s) but the header has 2" in result.stderr
    assert "line 5: has 1 field(s) but the header has 2" in result.stderr

    header = lrt.write("dup.csv", "job_id,steps,steps\na,1,2\n")
    result = lrt.cli("submit", header)
    assert result.exit_code == 2
    assert "line 1: the header repeats column(s) steps" in result.stderr

    assert lrt.cli("submit", str(lrt.tmp / "missing.csv")).exit_code == 2


def test_known_ids_are_skipped_unless_forced(lrt: Env) -> None:
    path = lrt.write("jobs.csv", "job_id,steps\na,1\nb,2\n")
    assert lrt.cli("submit", path).exit_code == 0
    lrt.store.update("a", state=JobState.SUCCEEDED, attempts=1, result={"sum": 1})
    lrt.store.request_cancel("b")

    again = lrt.cli("submit", path)
    assert again.exit_code == 0
    assert "submitted 0" in again.stdout
    assert "skipped 2 already known" in again.stdout
    assert lrt.broker.depth().waiting == 2

    forced = lrt.cli("submit", path, "--force")
    assert forced.exit_code == 0
    assert "submitted 2" in forced.stdout
    assert lrt.broker.depth().waiting == 4
    record = lrt.store.get("a")
    assert record is not None
    assert record.state == JobState.QUEUED
    assert record.result is None
    assert not lrt.store.cancel_requested("b")  # a forced job runs again


def test_bad_handler_spec_is_a_usage_error(lrt: Env) -> None:
    path = lrt.write("jobs.csv", "job_id,steps\na,1\n")
    result = lrt.cli("submit", path, "--handler", "no_such_module_xyz:fn")
    assert result.exit_code == 2
    assert "no_such_module_xyz" in result.stderr
    assert lrt.broker.depth().waiting == 0


# -- publish failures (a broker that refuses some messages) -------------------------------------


class RefusingBroker(LocalBroker):
    """The local broker, refusing the ids in ``refuse`` the way a real broker reports it."""

    refuse: frozenset[str] = frozenset()

    def publish(self, messages: Sequence[Message]) -> None:
        good = [m for m in messages if m.job_id not in self.refuse]
        bad = {m.job_id: "throttled" for m in messages if m.job_id in self.refuse}
        super().publish(good)
        if bad:
            raise PublishError(bad, published=len(good))


def test_refused_jobs_leave_no_record_claiming_they_are_queued(lrt: Env) -> None:
    broker: Broker = RefusingBroker.from_settings(lrt.settings)
    assert isinstance(broker, RefusingBroker)
    broker.refuse = frozenset({"j13", "j14"})
    lrt.store.update("j14", state=JobState.DEAD, failures=3, error="boom")  # known before
    rows = [Row(i + 1, {"job_id": f"j{i:02d}", "n": i}) for i in range(30)]
    checked = validate_rows(rows)
    assert not checked.bad

    summary = submit(broker, lrt.store, checked.jobs, force=True, batch_size=10)

    assert summary.failed == {"j13": "throttled", "j14": "throttled"}
    assert summary.submitted == [f"j{i:02d}" for i in range(20) if i not in (13, 14)]
    assert summary.not_attempted == [f"j{i:02d}" for i in range(20, 30)]
    assert isinstance(summary.error, PublishError)
    queued = {r.job_id for r in lrt.store.list_records(JobState.QUEUED)}
    assert queued == set(summary.submitted)
    assert lrt.store.get("j13") is None
    restored = lrt.store.get("j14")
    assert restored is not None
    assert restored.state == JobState.DEAD
    assert restored.error == "boom"
    assert lrt.broker.depth().waiting == 18

    # Run again once the broker takes everything: only what is missing goes out.
    broker.refuse = frozenset()
    again = submit(broker, lrt.store, checked.jobs, batch_size=10)
    assert again.ok
    assert sorted(again.submitted) == sorted(["j13", *summary.not_attempted])
    assert lrt.broker.depth().waiting == 29
    broker.close()


def test_too_large_payload_is_refused_before_sending(lrt: Env) -> None:
    class SmallBroker(LocalBroker):
        max_body_bytes = 100

    broker = SmallBroker.from_settings(lrt.settings)
    rows = [Row(1, {"job_id": "small", "x": "y"}), Row(2, {"job_id": "big", "x": "y" * 200})]
    summary = submit(broker, lrt.store, validate_rows(rows).jobs)
    assert set(summary.failed) == {"small", "big"}  # one batch: nothing of it is confirmed
    assert "100" in summary.failed["big"]
    assert lrt.store.list_records() == []
    assert lrt.broker.depth().waiting == 0
    broker.close()


def test_read_jobs_reports_undecodable_input(tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_bytes(b"job_id,steps\na,1\nb,\xff\n")
    from lrtkit.errors import InvalidJob

    with pytest.raises(InvalidJob, match=r"not UTF-8 text \(line 3"):
        read_jobs(path)


def test_records_exist_before_messages_are_published(lrt: Env) -> None:
    """A worker that receives a message at once always finds its record already queued."""
    seen: list[bool] = []
    store = lrt.store

    class Watching(LocalBroker):
        def publish(self, messages: Sequence[Message]) -> None:
            seen.extend(store.storage.exists(layout.record_key(m.job_id)) for m in messages)
            super().publish(messages)

    broker = Watching.from_settings(lrt.settings)
    summary = submit(broker, store, validate_rows([Row(1, {"job_id": "r1"})]).jobs)
    assert summary.ok
    assert seen == [True]
    broker.close()


def test_jsonl_lines_are_cut_at_newlines_only(tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text('{"job_id": "a", "text": "one\u2028two"}\r\n{"job_id": "b"}\n', "utf-8")
    rows = read_jobs(path)
    assert [(r.line, r.error) for r in rows] == [(1, None), (2, None)]
    assert rows[0].fields["text"] == "one\u2028two"
