"""Plugin loading through stevedore, with lrtkit's own errors.

Three namespaces: ``lrtkit.brokers`` (Broker subclasses), ``lrtkit.storage`` (Storage
subclasses, chosen by the URL scheme of ``LRT_STORAGE``) and ``lrtkit.scalers`` (scaling
providers). A name that is not installed gives :class:`~lrtkit.errors.PluginNotFound` listing
what is; a plugin that fails to import gives :class:`~lrtkit.errors.PluginLoadError` with the
cause. Neither ever surfaces as a raw stevedore or import traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from stevedore import DriverManager, ExtensionManager
from stevedore.exception import NoMatches

from lrtkit.errors import LrtError, PluginLoadError, PluginNotFound

if TYPE_CHECKING:
    from lrtkit.broker import Broker
    from lrtkit.config import Settings
    from lrtkit.storage.base import Storage

BROKERS = "lrtkit.brokers"
STORAGE = "lrtkit.storage"
SCALERS = "lrtkit.scalers"
NAMESPACES = (BROKERS, STORAGE, SCALERS)


@dataclass(frozen=True)
class PluginInfo:
    """An installed plugin: where it comes from and whether it imports."""

    namespace: str
    name: str
    target: str
    distribution: str | None
    version: str | None
    error: str | None


def installed(namespace: str) -> list[str]:
    """Names registered in ``namespace`` (importable or not)."""
    return sorted({ep.name for ep in entry_points(group=namespace)})


def load_class(namespace: str, name: str) -> Any:
    """Import the plugin ``name`` of ``namespace`` and return what its entry point names."""
    cached = ExtensionManager.ENTRY_POINT_CACHE.get(namespace, [])
    if name not in {ep.name for ep in cached}:
        # stevedore keeps each namespace's entry points for the life of the process; a plugin
        # installed since the first lookup would otherwise be reported missing.
        ExtensionManager.ENTRY_POINT_CACHE.pop(namespace, None)
    try:
        manager: DriverManager[Any] = DriverManager(
            namespace=namespace,
            name=name,
            invoke_on_load=False,
            on_load_failure_callback=_reraise,
        )
    except NoMatches:
        raise PluginNotFound(namespace, name, installed(namespace)) from None
    except _LoadFailure as failure:
        raise PluginLoadError(namespace, name, failure.cause) from failure.cause
    except RuntimeError as exc:  # stevedore: several plugins registered under one name
        raise PluginLoadError(namespace, name, exc) from None
    return manager.driver


def load_broker(settings: Settings) -> Broker:
    """The broker named by ``LRT_BROKER``, built from ``settings``."""
    cls = load_class(BROKERS, settings.broker)
    return _construct(BROKERS, settings.broker, cls, settings)  # type: ignore[no-any-return]


def load_storage(settings: Settings) -> Storage:
    """The storage named by the URL scheme of ``LRT_STORAGE``, built from ``settings``."""
    scheme = settings.storage_scheme
    cls = load_class(STORAGE, scheme)
    return _construct(STORAGE, scheme, cls, settings)  # type: ignore[no-any-return]


def load_scaler(name: str, settings: Settings) -> Any:
    """The scaling provider ``name`` of ``lrtkit.scalers``, built from ``settings``."""
    cls = load_class(SCALERS, name)
    return _construct(SCALERS, name, cls, settings)


def describe_installed() -> list[PluginInfo]:
    """Every plugin of every namespace, each tried for import (for ``lrtkit plugins``)."""
    infos = []
    for namespace in NAMESPACES:
        for ep in sorted(entry_points(group=namespace), key=lambda e: e.name):
            error = None
            try:
                ep.load()
            except Exception as exc:  # noqa: BLE001 - reported, not raised
                error = f"{type(exc).__name__}: {exc}"
            dist = ep.dist
            infos.append(
                PluginInfo(
                    namespace=namespace,
                    name=ep.name,
                    target=ep.value,
                    distribution=dist.metadata["Name"] if dist is not None else None,
                    version=dist.version if dist is not None else None,
                    error=error,
                )
            )
    return infos


class _LoadFailure(Exception):
    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _reraise(_manager: object, _entrypoint: object, exc: BaseException) -> None:
    raise _LoadFailure(exc)


def _construct(namespace: str, name: str, cls: Any, settings: Settings) -> Any:
    factory = getattr(cls, "from_settings", None)
    if factory is None:
        raise PluginLoadError(
            namespace, name, TypeError(f"{cls!r} has no from_settings(settings) classmethod")
        )
    try:
        return factory(settings)
    except LrtError:
        raise
    except Exception as exc:
        raise PluginLoadError(namespace, name, exc) from exc
