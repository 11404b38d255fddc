"""Queue-depth autoscaling and the SaladCloud node side.

* :mod:`lrtkit.autoscale.policy`: how many replicas a queue depth asks for
  (``proportional`` and ``steps``), clamped to min/max.
* :mod:`lrtkit.autoscale.decision`: clamping, the in-flight floor, the cool-down: one decision.
* :mod:`lrtkit.autoscale.state`: the cool-down memory kept in the storage between runs.
* :mod:`lrtkit.autoscale.autoscaler`: depth in, decision applied, one log line out (once or a loop).
* :mod:`lrtkit.autoscale.provider`: the scaling provider protocol (``lrtkit.scalers`` plugins).
* :mod:`lrtkit.autoscale.salad`: SaladCloud container groups through the public API.
* :mod:`lrtkit.autoscale.dry_run`: prints the decision, changes nothing.
* :mod:`lrtkit.autoscale.aws_lambda`: a Lambda handler running one decision.
* :mod:`lrtkit.autoscale.imds`: the worker's reporter to the SaladCloud instance metadata
  service (deletion cost while busy or idle, reallocation after repeated failures).
* :mod:`lrtkit.autoscale.http`: the small stdlib JSON-over-HTTP client both use.

Submodules are imported on use, so the worker pays only for :mod:`~lrtkit.autoscale.imds`.
"""
