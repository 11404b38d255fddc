"""How long to wait before retry number N: the one backoff rule every lrtkit part uses."""

from __future__ import annotations

import random


def backoff(attempt: int, first: float, cap: float, jitter: float = 0.5) -> float:
    """Pause before retry ``attempt`` (1-based): ``first`` doubled each time, at most ``cap``.

    The pause is then scaled by a random factor in ``[1 - jitter, 1]`` so that many clients
    failing together (a broker restart, a throttled bucket) do not retry in lockstep.
    """
    pause = min(cap, first * 2.0 ** max(0, attempt - 1))
    return pause * random.uniform(1.0 - jitter, 1.0)
