"""A realistic long job: train a low-rank adapter, checkpointing a folder of files.

Real LoRA trainers (diffusers, peft, kohya) keep their state as files: adapter weights,
optimizer state, trainer state. This example trains a tiny low-rank adapter with plain
Python arithmetic (no numpy, no GPU) so it runs anywhere, and treats its files the way a
real trainer does:

* ``ctx.checkpoint.restore_dir(work)`` brings back the newest checkpoint folder, on whatever
  machine the job lands after an interruption;
* ``ctx.checkpoint.save_dir(work)`` every ``save_every`` steps uploads only the files that
  changed; on SIGTERM the handler saves once more inside the grace period before stopping;
* the finished adapter goes to ``ctx.output_dir``, uploaded as the job's artifacts;
* ``ctx.progress(step, total, loss=...)`` shows in ``lrtkit status JOB_ID``.

Try it::

    lrtkit submit examples/jobs.jsonl --handler examples.train_lora:train
    lrtkit run examples.train_lora:train

Training is deterministic (data order comes from the step number, not from a random state),
so a job interrupted and resumed ends with the same adapter as one that never stopped.
"""

from __future__ import annotations

import hashlib
import json
import random
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

import lrtkit

Matrix = list[list[float]]
MOMENTUM = 0.9


class LoraJob(BaseModel):
    base_model: str = Field(description="name of the model the adapter is for")
    captions: list[str] = Field(min_length=1, description="the training examples")
    rank: int = Field(4, ge=1, le=64)
    dim: int = Field(16, ge=2, le=256)
    epochs: int = Field(2, ge=1)
    steps_per_epoch: int = Field(50, ge=1)
    learning_rate: float = Field(0.005, gt=0, le=1)
    save_every: int = Field(10, ge=1, description="steps between folder checkpoints")
    seconds_per_step: float = Field(0.0, ge=0, description="simulated extra work per step")


def train(job: LoraJob, ctx: lrtkit.JobContext) -> dict[str, Any]:
    total = job.epochs * job.steps_per_epoch
    data = _dataset(job)
    with tempfile.TemporaryDirectory(prefix=f"lora-{ctx.job_id}-") as tmp:
        work = Path(tmp)
        if ctx.checkpoint.restore_dir(work):
            state = _load(work)
            ctx.log.info("resumed from step %d of %d", state["step"], total)
        else:
            state = _fresh(job)
        while state["step"] < total:
            try:
                ctx.check()
            except lrtkit.Stop as stop:
                if stop.reason == "shutdown":  # SIGTERM: keep what was done since the last save
                    _dump(work, state)
                    ctx.checkpoint.save_dir(work)
                raise
            x, y = data[state["step"] % len(data)]
            loss = _sgd_step(state, x, y, job.learning_rate)
            state["step"] += 1
            state["losses"] = [*state["losses"][-49:], loss]
            ctx.progress(state["step"], total, loss=round(loss, 6), epoch=_epoch(job, state))
            if state["step"] % job.save_every == 0 or state["step"] == total:
                _dump(work, state)
                ctx.checkpoint.save_dir(work)
            if job.seconds_per_step:
                ctx.stopping.wait(job.seconds_per_step)
        final = _eval_loss(state, data)
        _write_outputs(ctx.output_dir, job, state, final)
    return {"steps": total, "final_loss": round(final, 6), "rank": job.rank}


# -- the toy model: y = B (A x), fitted to a hidden rank-r map --------------------------------


def _rng(job: LoraJob, purpose: str) -> random.Random:
    seed = hashlib.sha256(f"{job.base_model}|{'|'.join(job.captions)}|{purpose}".encode())
    return random.Random(seed.hexdigest())


def _matrix(rng: random.Random, rows: int, cols: int, scale: float) -> Matrix:
    return [[rng.gauss(0.0, scale) for _ in range(cols)] for _ in range(rows)]


def _matvec(m: Matrix, v: list[float]) -> list[float]:
    return [sum(a * b for a, b in zip(row, v, strict=True)) for row in m]


def _dataset(job: LoraJob) -> list[tuple[list[float], list[float]]]:
    """One (input, target) pair per caption; targets come from a hidden low-rank map."""
    rng = _rng(job, "data")
    u = _matrix(rng, job.dim, job.rank, 1.0 / job.rank**0.5)
    v = _matrix(rng, job.rank, job.dim, 1.0 / job.dim**0.5)
    pairs = []
    for caption in job.captions:
        crng = random.Random(hashlib.sha256(caption.encode()).hexdigest())
        x = [crng.gauss(0.0, 1.0) for _ in range(job.dim)]
        pairs.append((x, _matvec(u, _matvec(v, x))))
    return pairs


def _fresh(job: LoraJob) -> dict[str, Any]:
    rng = _rng(job, "init")
    zeros = [[0.0] * job.rank for _ in range(job.dim)]
    return {
        "step": 0,
        "losses": [],
        # LoRA's usual start: A random, B zero, so the adapter starts as a no-op.
        "A": _matrix(rng, job.rank, job.dim, 1.0 / job.dim**0.5),
        "B": zeros,
        "mA": [[0.0] * job.dim for _ in range(job.rank)],
        "mB": [row[:] for row in zeros],
    }


def _sgd_step(state: dict[str, Any], x: list[float], y: list[float], lr: float) -> float:
    a, b, ma, mb = state["A"], state["B"], state["mA"], state["mB"]
    h = _matvec(a, x)
    err = [p - t for p, t in zip(_matvec(b, h), y, strict=True)]
    back = [sum(b[i][k] * err[i] for i in range(len(err))) for k in range(len(h))]
    for i, e in enumerate(err):
        for k, hk in enumerate(h):
            mb[i][k] = MOMENTUM * mb[i][k] + e * hk
            b[i][k] -= lr * mb[i][k]
    for k, g in enumerate(back):
        for j, xj in enumerate(x):
            ma[k][j] = MOMENTUM * ma[k][j] + g * xj
            a[k][j] -= lr * ma[k][j]
    return sum(e * e for e in err) / len(err)


def _eval_loss(state: dict[str, Any], data: list[tuple[list[float], list[float]]]) -> float:
    total = 0.0
    for x, y in data:
        pred = _matvec(state["B"], _matvec(state["A"], x))
        total += sum((p - t) ** 2 for p, t in zip(pred, y, strict=True)) / len(y)
    return total / len(data)


def _epoch(job: LoraJob, state: dict[str, Any]) -> int:
    step: int = state["step"]
    return min(job.epochs, 1 + (step - 1) // job.steps_per_epoch)


# -- files: what a real trainer keeps in its output folder -------------------------------------


def _dump(work: Path, state: dict[str, Any]) -> None:
    (work / "adapter.json").write_text(json.dumps({"A": state["A"], "B": state["B"]}))
    (work / "optimizer.json").write_text(json.dumps({"mA": state["mA"], "mB": state["mB"]}))
    (work / "trainer_state.json").write_text(
        json.dumps({"step": state["step"], "losses": state["losses"]})
    )


def _load(work: Path) -> dict[str, Any]:
    adapter = json.loads((work / "adapter.json").read_text())
    optimizer = json.loads((work / "optimizer.json").read_text())
    trainer = json.loads((work / "trainer_state.json").read_text())
    return {**trainer, **adapter, **optimizer}


def _write_outputs(out: Path, job: LoraJob, state: dict[str, Any], final: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    adapter = {"base_model": job.base_model, "rank": job.rank, "A": state["A"], "B": state["B"]}
    (out / "adapter_model.json").write_text(json.dumps(adapter))
    (out / "training_log.json").write_text(
        json.dumps({"steps": state["step"], "final_loss": final, "last_losses": state["losses"]})
    )
