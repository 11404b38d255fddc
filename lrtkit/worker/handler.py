"""Finding a handler from ``module:function`` and calling it the way it wants.

A handler is ``fn(job, ctx)`` or ``fn(job)``. The payload model is the annotation of the first
parameter: a pydantic ``BaseModel`` subclass validates the body into that model; no annotation,
``dict`` or ``Any`` hands the payload over as a dict. The current directory is importable, like
``python -m``, so ``lrtkit run app:train`` finds ``./app.py``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import typing
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from lrtkit.errors import ConfigError


def _ensure_cwd_importable() -> None:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def _import(spec: str) -> Callable[..., Any]:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(
            f"handler {spec!r} is not of the form MODULE:FUNCTION "
            "(e.g. app:train for train() in app.py)"
        )
    _ensure_cwd_importable()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise ConfigError(
                f"handler {spec!r}: no module named {exc.name!r} "
                f"(looked in the current directory {os.getcwd()} and on sys.path)"
            ) from None
        raise ConfigError(f"handler {spec!r}: importing {module_name!r} failed: {exc}") from exc
    except (Exception, SystemExit) as exc:  # a module that calls sys.exit() on import too
        raise ConfigError(
            f"handler {spec!r}: importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigError(
                f"handler {spec!r}: module {module_name!r} has no attribute {attr!r}"
            ) from None
    if not callable(target):
        raise ConfigError(f"handler {spec!r} is a {type(target).__name__}, not a function")
    return typing.cast(Callable[..., Any], target)


def _positional(fn: Callable[..., Any], spec: str) -> list[inspect.Parameter]:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"handler {spec!r}: cannot read its signature: {exc}") from None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = [p for p in sig.parameters.values() if p.kind in kinds]
    required = [p for p in params if p.default is inspect.Parameter.empty]
    varargs = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in sig.parameters.values())
    if not params and not varargs:
        raise ConfigError(f"handler {spec!r} must take the job as its first argument: fn(job, ctx)")
    if len(required) > 2:
        raise ConfigError(
            f"handler {spec!r} requires {len(required)} arguments; it is called as fn(job, ctx)"
        )
    return params


def _model_of(
    fn: Callable[..., Any], param: inspect.Parameter, spec: str
) -> type[BaseModel] | None:
    annotation: Any = param.annotation
    if annotation is inspect.Parameter.empty:
        return None
    if isinstance(annotation, str):
        try:
            hints = typing.get_type_hints(fn)
        except Exception as exc:  # noqa: BLE001 - any failure to resolve is reported
            raise ConfigError(
                f"handler {spec!r}: cannot resolve the annotation {annotation!r} of "
                f"parameter {param.name!r}: {type(exc).__name__}: {exc}"
            ) from None
        annotation = hints.get(param.name, inspect.Parameter.empty)
    if annotation is Any or annotation is dict or typing.get_origin(annotation) is dict:
        return None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    raise ConfigError(
        f"handler {spec!r}: the first parameter {param.name!r} is annotated {annotation!r}; "
        "use a pydantic BaseModel subclass (the payload model) or dict"
    )


def load_handler(spec: str) -> tuple[Callable[..., Any], type[BaseModel] | None]:
    """Import ``module:function`` and find its payload model (None = the payload as a dict).

    Raises :class:`~lrtkit.errors.ConfigError` naming ``spec`` on any problem.
    """
    fn = _import(spec)
    params = _positional(fn, spec)
    model = _model_of(fn, params[0], spec) if params else None
    return fn, model


def wants_context(fn: Callable[..., Any]) -> bool:
    """True when ``fn`` takes a second positional argument (the ``JobContext``)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return True
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = [p for p in sig.parameters.values() if p.kind in kinds]
    varargs = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in sig.parameters.values())
    return varargs or len(params) >= 2
