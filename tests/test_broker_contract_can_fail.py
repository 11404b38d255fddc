"""The broker contract suite must fail on broken brokers, not only pass on good ones.

The suite runs in a child pytest against the in-memory toy broker: once sound (the tests that
guard against the flaws pass), then with one flaw at a time (the tests that guard against
that flaw fail).
"""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

CONTRACT_RUN = """
import pytest

from lrtkit.testing.broker_contract import BrokerContract
from lrtkit.testing.toy_brokers import memory_target


@pytest.fixture
def lrt_broker_target(request):
    target = memory_target(flaw=request.cls.flaw)
    yield target
    target.close()


class TestSound(BrokerContract):
    flaw = None
    lease_seconds = 1.0
    long_lease_seconds = 20.0
    release_delay = 1.0
    settle_seconds = 1.0
    receive_wait = 1.5


class TestDoubleDelivery(TestSound):
    flaw = "double_delivery"


class TestForgetsReleased(TestSound):
    flaw = "forget_released"


class TestLosesDeadLetters(TestSound):
    flaw = "lose_dead_letters"
"""

# Which contract tests each flaw must trip (the run is limited to these, plus the sound run).
MUST_FAIL = {
    "TestDoubleDelivery": {
        "test_lease_expires_and_job_is_redelivered",
        "test_extend_keeps_job_invisible",
        "test_no_job_held_twice_across_threads",
    },
    "TestForgetsReleased": {
        "test_release_makes_job_available_at_once",
        "test_release_with_delay",
        "test_delivery_counts",
    },
    "TestLosesDeadLetters": {
        "test_dead_letter_keeps_body_and_reason",
        "test_redrive_by_id_and_all",
    },
}


def _selection() -> str:
    flawed = [f"({cls} and ({' or '.join(sorted(tests))}))" for cls, tests in MUST_FAIL.items()]
    guarded = sorted(set().union(*MUST_FAIL.values()))
    sound = f"(TestSound and ({' or '.join(guarded)}))"
    return " or ".join([sound, *flawed])


def _outcomes(report: Path) -> dict[tuple[str, str], str]:
    outcomes = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        cls = case.get("classname", "").rsplit(".", 1)[-1]
        kinds = {child.tag for child in case}
        if kinds & {"failure", "error"}:
            outcome = "failed"
        elif "skipped" in kinds:
            outcome = "skipped"
        else:
            outcome = "passed"
        outcomes[(cls, case.get("name", ""))] = outcome
    return outcomes


@pytest.fixture(scope="module")
def contract_outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], str]:
    folder = tmp_path_factory.mktemp("contract-run")
    (folder / "test_toy_contract.py").write_text(CONTRACT_RUN)
    (folder / "pytest.ini").write_text("[pytest]\n")
    report = folder / "report.xml"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "test_toy_contract.py",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(folder),
            "-c",
            str(folder / "pytest.ini"),
            "-k",
            _selection(),
            f"--junitxml={report}",
        ],
        check=False,
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert report.is_file(), f"the contract run wrote no report:\n{run.stdout}\n{run.stderr}"
    assert run.returncode == 1, f"expected failures (exit 1), got {run.returncode}:\n{run.stdout}"
    return _outcomes(report)


def test_sound_toy_broker_passes(contract_outcomes: dict[tuple[str, str], str]) -> None:
    sound = {name: o for (cls, name), o in contract_outcomes.items() if cls == "TestSound"}
    assert set(sound) == set().union(*MUST_FAIL.values())
    failed = sorted(name for name, o in sound.items() if o == "failed")
    assert not failed, f"the sound toy broker failed: {failed}"
    assert sound["test_lease_expires_and_job_is_redelivered"] == "passed"


@pytest.mark.parametrize("flawed", sorted(MUST_FAIL))
def test_contract_fails_on_flawed_broker(
    contract_outcomes: dict[tuple[str, str], str], flawed: str
) -> None:
    ran = {name: o for (cls, name), o in contract_outcomes.items() if cls == flawed}
    assert set(ran) == MUST_FAIL[flawed]
    not_failed = sorted(name for name, o in ran.items() if o != "failed")
    assert not not_failed, f"{flawed}: these contract tests did not catch the flaw: {not_failed}"
