"""How fast RabbitMQ hands a dead worker's job to another, and how fast lrtkit publishes.

Measures, against a real server:

* SIGKILL -> redelivery: a child process holds a job (``python -m lrtkit.testing.broker_contract
  hold``), is SIGKILLed, and the time until a waiting consumer here receives the job;
* forced close -> lease lost: from the return of ``rabbitmqctl close_connection`` on a holder's
  connection (local server only) until the holder sees ``Delivery.lost``;
* publish throughput with pipelined publisher confirms.

    LRT_RABBITMQ_URL=amqp://guest:guest@127.0.0.1:5672/%2F python benchmarks/rabbitmq_latency.py

Prints the figures and writes them to ``benchmarks/results/rabbitmq_latency.json``
(``--out`` to change). Every queue it makes is deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from lrtkit_rabbitmq.broker import RabbitMQBroker
from lrtkit_rabbitmq.testing import close_connections, delete_queue_set

from lrtkit.broker import Message
from lrtkit.testing import BrokerTarget, unique_name

URL = os.environ.get("LRT_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def message(job_id: str) -> Message:
    return Message(job_id, json.dumps({"job_id": job_id, "steps": 1}).encode())


def kill_latency(target: BrokerTarget, waiter: RabbitMQBroker, rounds: int) -> list[float]:
    times = []
    for i in range(rounds):
        waiter.publish([message(f"kill-{i}")])
        child = subprocess.Popen(
            [sys.executable, "-m", "lrtkit.testing.broker_contract", "hold", "--wait", "30"],
            env=target.subprocess_env({"LRT_LEASE_SECONDS": "60"}),
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.startswith("HOLDING"), line
        killed = time.monotonic()
        child.send_signal(signal.SIGKILL)
        got = waiter.receive(30)
        took = time.monotonic() - killed
        child.wait()
        assert got is not None, "the job never came back"
        waiter.ack(got)
        times.append(took)
    return times


def close_latency(target: BrokerTarget, rounds: int) -> list[float]:
    times = []
    name = target.env["LRT_RABBITMQ_CONNECTION_NAME"]
    for i in range(rounds):
        holder = target.broker()
        assert isinstance(holder, RabbitMQBroker)
        holder.publish([message(f"close-{i}")])
        held = holder.receive(10)
        assert held is not None
        close_connections(f"{name} (worker)")  # returns once the server closed it
        started = time.monotonic()
        while not held.lost and time.monotonic() - started < 30:
            time.sleep(0.001)
        times.append(time.monotonic() - started)
        again = holder.receive(10)
        assert again is not None
        holder.ack(again)
        holder.close()
    return times


def publish_rate(broker: RabbitMQBroker, count: int) -> float:
    started = time.monotonic()
    broker.publish([message(f"pub-{i}") for i in range(count)])
    return count / (time.monotonic() - started)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "min_ms": round(min(values) * 1000, 1),
        "median_ms": round(statistics.median(values) * 1000, 1),
        "max_ms": round(max(values) * 1000, 1),
        "rounds": len(values),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--publish", type=int, default=5000)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "rabbitmq_latency.json",
    )
    args = parser.parse_args()
    queue = unique_name("lrt-bench")
    target = BrokerTarget(
        env={
            "LRT_BROKER": "rabbitmq",
            "LRT_QUEUE": queue,
            "LRT_RABBITMQ_URL": URL,
            "LRT_RABBITMQ_CONNECTION_NAME": queue,
        }
    )
    results: dict[str, object] = {"server": URL.split("@")[-1]}
    try:
        waiter = target.broker()
        assert isinstance(waiter, RabbitMQBroker)
        waiter.ensure()
        kills = kill_latency(target, waiter, args.rounds)
        results["sigkill_to_redelivery"] = summary(kills)
        print(f"SIGKILL -> redelivered to a waiting consumer: {summary(kills)}")
        if shutil.which("rabbitmqctl"):
            closes = close_latency(target, max(3, args.rounds // 3))
            results["forced_close_to_lease_lost"] = summary(closes)
            print(f"rabbitmqctl close_connection -> Delivery.lost: {summary(closes)}")
        rate = publish_rate(waiter, args.publish)
        results["publish_confirmed_per_second"] = round(rate)
        print(f"publish with confirms: {rate:,.0f} messages/s ({args.publish} messages)")
    finally:
        target.close()
        delete_queue_set(URL, queue)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
