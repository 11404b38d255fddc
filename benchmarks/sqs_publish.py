"""Publish throughput of the SQS broker against a local moto server, by thread count.

    python benchmarks/sqs_publish.py [--jobs 300] [--threads 1,4,8] [--endpoint URL]

Starts a moto server (or uses --endpoint / LRT_TEST_MOTO_URL), creates a fresh FIFO queue per
run with ``ensure()``, publishes ``--jobs`` guide-shaped jobs in batches of 10 and prints
jobs per second; the figures are saved to ``benchmarks/results/sqs_publish.json``.

Against a local moto server the server's own CPU is the limit (one Python process doing work
that grows with queue depth), so more threads barely help here; they pay off against AWS,
where each request spends most of its time on the network. AWS's own limit for a FIFO queue
without high-throughput mode is 300 requests/s per action, i.e. 3000 messages/s in batches.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from lrtkit_sqs.broker import SqsBroker

from lrtkit.broker import Message
from lrtkit.config import load_settings
from lrtkit.jobs import encode_body
from lrtkit.plugins import load_broker
from lrtkit.testing.services import moto_server
from lrtkit.testing.target import unique_name

RESULTS = Path(__file__).resolve().parent / "results" / "sqs_publish.json"


@contextlib.contextmanager
def endpoint(url: str | None) -> Iterator[str]:
    if url:
        yield url
    else:
        with moto_server() as started:
            yield started


def run(url: str, jobs: int, threads: int) -> dict[str, float]:
    env = {
        "LRT_BROKER": "sqs",
        "LRT_QUEUE": unique_name("bench"),
        "LRT_SQS_ENDPOINT_URL": url,
        "LRT_SQS_REGION": "us-east-1",
        "LRT_SQS_ACCESS_KEY_ID": "bench",
        "LRT_SQS_SECRET_ACCESS_KEY": "bench",
        "LRT_SQS_THREADS": str(threads),
    }
    broker = load_broker(load_settings(environ=env))
    assert isinstance(broker, SqsBroker)
    try:
        broker.ensure()
        messages = [
            Message(f"job-{i}", encode_body(f"job-{i}", {"steps": 600})) for i in range(jobs)
        ]
        started = time.perf_counter()
        broker.publish(messages)
        elapsed = time.perf_counter() - started
        waiting = broker.depth().waiting
    finally:
        q = broker.queues
        for queue_url in (q.url, q.dlq_url):
            if queue_url:
                broker.api.call("delete_queue", "bench queue", QueueUrl=queue_url)
        broker.close()
    return {
        "threads": threads,
        "jobs": jobs,
        "seconds": round(elapsed, 3),
        "jobs_per_second": round(jobs / elapsed, 1),
        "in_queue": waiting,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--threads", default="1,4,8")
    parser.add_argument("--endpoint", default=None)
    args = parser.parse_args()
    counts = [int(t) for t in args.threads.split(",")]
    rows = []
    with endpoint(args.endpoint) as url:
        run(url, 20, 1)  # warm-up: imports, connections
        for threads in counts:
            row = run(url, args.jobs, threads)
            rows.append(row)
            print(
                f"threads={row['threads']:>2}  {row['jobs']} jobs in {row['seconds']:.2f}s  "
                f"{row['jobs_per_second']:>7.1f} jobs/s  (in queue: {row['in_queue']})"
            )
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "sqs_publish",
                "at": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": f"{platform.system()} {platform.machine()}",
                "python": platform.python_version(),
                "endpoint": "moto server (local)",
                "runs": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
