"""Upload one checkpoint folder three ways and print the throughput of each.

    python benchmarks/checkpoint_upload.py --size-mb 512 --files 4

1. ``lrtkit``: ``Checkpoint.save_dir`` on the S3 storage (content-addressed blobs, transfer
   manager with multipart and parallel parts, CRC32 checked by the server, then the fenced
   manifest write);
2. ``put_object``: one ``put_object`` per file, the way the SaladCloud guides store checkpoints;
3. ``upload_file``: boto3's own ``upload_file`` per file with its default transfer settings.

Then ``Checkpoint.restore_dir`` of what (1) stored, for the way back. By default a moto server
is started on a free loopback port; ``--endpoint URL`` uses another S3-compatible endpoint
(credentials from ``LRT_S3_*`` / ``AWS_*``; the bucket is created if missing and emptied of
what the run wrote). Figures go to stdout and to ``benchmarks/results/`` as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
RESULTS = Path(__file__).resolve().parent / "results"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/moto-api/", timeout=2):
                    break
            except urllib.error.HTTPError:
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    message = "moto server did not start (pip install 'moto[server]')"
                    raise SystemExit(message) from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def make_folder(root: Path, size_mb: int, files: int) -> int:
    """``files`` files of about ``size_mb / files`` MiB each, every MiB different."""
    root.mkdir(parents=True, exist_ok=True)
    block = bytearray(os.urandom(MiB))
    per_file = max(1, size_mb // files)
    total = 0
    for n in range(files):
        with (root / f"shard-{n:03d}.bin").open("wb") as fh:
            for i in range(per_file):
                block[:8] = (n * 1_000_003 + i).to_bytes(8, "big")
                fh.write(block)
                total += MiB
    return total


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=512, help="folder size (default 512)")
    parser.add_argument("--files", type=int, default=4, help="number of files (default 4)")
    parser.add_argument("--endpoint", help="S3 endpoint URL (default: start a moto server)")
    parser.add_argument("--bucket", default=f"lrt-bench-{uuid.uuid4().hex[:8]}")
    parser.add_argument("--region", default=os.environ.get("LRT_S3_REGION", "us-east-1"))
    parser.add_argument("--rounds", type=int, default=1, help="repeat, report the median")
    parser.add_argument("--out", type=Path, help="JSON file (default benchmarks/results/...)")
    args = parser.parse_args(argv)

    import boto3
    import botocore
    from botocore.config import Config

    from lrtkit.checkpoint import Checkpoint
    from lrtkit.config import load_settings
    from lrtkit.plugins import load_storage

    with contextlib.ExitStack() as stack:
        endpoint = args.endpoint or stack.enter_context(moto_server())
        key_id = os.environ.get("LRT_S3_ACCESS_KEY_ID", "bench" if not args.endpoint else "")
        secret = os.environ.get("LRT_S3_SECRET_ACCESS_KEY", "bench" if not args.endpoint else "")
        env = {
            "LRT_STORAGE": f"s3://{args.bucket}/lrtkit",
            "LRT_S3_ENDPOINT_URL": endpoint,
            "LRT_S3_REGION": args.region,
            **({"LRT_S3_ACCESS_KEY_ID": key_id} if key_id else {}),
            **({"LRT_S3_SECRET_ACCESS_KEY": secret} if secret else {}),
        }
        # What a guide user builds: a plain client, default settings.
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=args.region,
            aws_access_key_id=key_id or None,
            aws_secret_access_key=secret or None,
            config=Config(s3={"addressing_style": "path"}),
        )
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=args.bucket)

        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lrt-bench-")))
        folder = work / "checkpoint"
        total = make_folder(folder, args.size_mb, args.files)
        files = sorted(folder.iterdir())
        storage = load_storage(load_settings(environ=env))
        job_ids: list[str] = []

        def lrtkit_save() -> None:
            job_ids.append(f"bench-{uuid.uuid4().hex[:8]}")  # a new job: nothing stored yet
            checkpoint = Checkpoint(storage, job_ids[-1], "bench-writer")
            checkpoint.claim()
            checkpoint.save_dir(folder)

        def put_object_each() -> None:
            for path in files:
                with path.open("rb") as body:
                    client.put_object(Bucket=args.bucket, Key=f"put/{path.name}", Body=body)

        def upload_file_each() -> None:
            for path in files:
                client.upload_file(str(path), args.bucket, f"upload/{path.name}")

        def lrtkit_restore() -> None:
            shutil.rmtree(work / "restored", ignore_errors=True)
            Checkpoint(storage, job_ids[-1], "bench-reader").restore_dir(work / "restored")

        def clear(prefix: str) -> None:
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket=args.bucket, Prefix=prefix
            )
            for page in pages:
                keys: Any = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    client.delete_objects(Bucket=args.bucket, Delete={"Objects": keys})

        uploads: list[tuple[str, Callable[[], None], str | None]] = [
            ("lrtkit save_dir", lrtkit_save, None),
            ("put_object per file", put_object_each, "put/"),
            ("upload_file per file", upload_file_each, "upload/"),
        ]
        seconds: dict[str, list[float]] = {name: [] for name, _, _ in uploads}
        seconds["lrtkit restore_dir"] = []
        try:
            for round_no in range(args.rounds):
                # Each round starts with another method, so none always runs first.
                shift = round_no % len(uploads)
                order = uploads[shift:] + uploads[:shift]
                order.append(("lrtkit restore_dir", lrtkit_restore, "lrtkit/"))
                for name, run, cleanup in order:
                    took = timed(run)
                    seconds[name].append(took)
                    rate = total / MiB / took
                    print(f"{name:<22} {total / MiB:6.0f} MiB {took:7.2f} s {rate:7.1f} MiB/s")
                    if cleanup:
                        clear(cleanup)
        finally:
            clear("lrtkit/")
            clear("put/")
            clear("upload/")
            if not args.endpoint:
                with contextlib.suppress(Exception):
                    client.delete_bucket(Bucket=args.bucket)
            shutil.rmtree(work / "restored", ignore_errors=True)

    figures = {
        name: {
            "median_seconds": round(statistics.median(runs), 3),
            "median_MiB_per_s": round(total / MiB / statistics.median(runs), 1),
            "seconds": [round(x, 3) for x in runs],
        }
        for name, runs in seconds.items()
    }
    if args.rounds > 1:
        print("median over", args.rounds, "rounds:")
        for name, fig in figures.items():
            print(f"  {name:<22} {fig['median_MiB_per_s']:7.1f} MiB/s")

    result = {
        "benchmark": "checkpoint_upload",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "endpoint": "moto (loopback)" if not args.endpoint else args.endpoint,
        "size_mib": total // MiB,
        "files": len(files),
        "rounds": args.rounds,
        "figures": figures,
        "versions": {
            "python": platform.python_version(),
            "boto3": boto3.__version__,
            "botocore": botocore.__version__,
        },
        "cpus": os.cpu_count(),
        "lrtkit_settings": {
            k: v for k, v in os.environ.items() if k.startswith("LRT_S3_") and "SECRET" not in k
        },
    }
    out = args.out or RESULTS / f"checkpoint_upload-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
