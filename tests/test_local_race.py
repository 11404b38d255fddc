"""Two worker processes race on 1,000 jobs in one SQLite file: each acked once, none lost."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from lrtkit.brokers.local import LocalBroker
from lrtkit.testing.broker_contract import job

JOBS = 1000

RACER = r"""
import os, sys, time
from pathlib import Path
from lrtkit.config import load_settings
from lrtkit.plugins import load_broker

out, go = Path(sys.argv[1]), Path(sys.argv[2])
broker = load_broker(load_settings())
broker.depth()
print("READY", flush=True)
while not go.exists():
    time.sleep(0.01)
with out.open("w") as acks:
    while True:
        delivery = broker.receive(0.3)
        if delivery is None:
            if broker.depth().waiting == 0:
                break
            continue
        broker.ack(delivery)
        acks.write(delivery.body.decode() + "\n")
        acks.flush()
        time.sleep(0.001)  # a real worker works between receives: the other racer gets turns
broker.close()
print("DONE", flush=True)
"""


def test_two_processes_ack_every_job_exactly_once(tmp_path: Path) -> None:
    db = tmp_path / "queue.sqlite3"
    env = {
        **os.environ,
        "LRT_BROKER": "local",
        "LRT_LOCAL_DB": str(db),
        "LRT_QUEUE": "race",
        "LRT_LEASE_SECONDS": "120",
    }
    go = tmp_path / "go"
    outs = [tmp_path / f"acks-{i}.txt" for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(out), str(go)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for out in outs
    ]
    broker = LocalBroker(db, "race")
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "READY", proc.stderr
        ids = [f"race-{i:04d}" for i in range(JOBS)]
        broker.publish([job(i) for i in ids])
        go.touch()
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    per_process = [out.read_text().splitlines() for out in outs]
    counts = Counter(line for lines in per_process for line in lines)
    expected = {job(i).body.decode() for i in ids}
    twice = sorted(body for body, n in counts.items() if n > 1)
    assert not twice, f"acked more than once: {twice[:10]}"
    missing = sorted(expected - set(counts))
    assert not missing, f"never acked: {missing[:10]}"
    assert set(counts) == expected
    assert all(lines for lines in per_process), [len(x) for x in per_process]
    assert tuple(broker.depth()) == (0, 0, 0)
    assert broker.receive(0) is None
    broker.close()
