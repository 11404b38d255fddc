"""The demo: the whole lrtkit story on the embedded default, in under a minute.

:mod:`lrtkit.demo.handler` is the job (kept free of heavy imports: every worker loads it);
:mod:`lrtkit.demo.runner` drives the story for ``lrtkit demo``.
"""
