"""Plugin loading: friendly errors for missing and broken plugins, and the installed list.

Broken plugins come from a throwaway distribution (a ``.dist-info`` folder with an
``entry_points.txt``) written to ``tmp_path`` and put on ``sys.path``. stevedore caches entry
points twice: on disk and in memory keyed on ``sys.path`` (a new path entry gets a fresh view),
and per namespace in ``ExtensionManager.ENTRY_POINT_CACHE`` for the life of the process, which
the fixture swaps for an empty one while the throwaway distribution is on the path.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from stevedore.extension import ExtensionManager

from lrtkit.brokers.local import LocalBroker
from lrtkit.config import load_settings
from lrtkit.errors import LrtError, PluginLoadError, PluginNotFound
from lrtkit.plugins import (
    BROKERS,
    STORAGE,
    describe_installed,
    installed,
    load_broker,
    load_class,
    load_storage,
)


def make_distribution(site: Path, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """A minimal installed distribution with ``lrtkit.brokers`` entry points."""
    name = f"lrt-test-plugins-{uuid.uuid4().hex[:8]}"
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = [f"{key} = {value}" for key, value in entry_points.items()]
    (info / "entry_points.txt").write_text(f"[{BROKERS}]\n" + "\n".join(lines) + "\n")
    for module, source in modules.items():
        (site / f"{module}.py").write_text(source)


@pytest.fixture
def broken_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Entry points that fail in different ways; returns plugin name -> module name."""
    tag = uuid.uuid4().hex[:8]
    mods = {
        "import": f"lrt_plug_import_{tag}",
        "raises": f"lrt_plug_raises_{tag}",
        "nofactory": f"lrt_plug_nofactory_{tag}",
    }
    make_distribution(
        tmp_path / "site",
        {
            f"broken-import-{tag}": f"{mods['import']}:Broker",
            f"missing-attr-{tag}": "lrtkit.brokers.local:NoSuchBroker",
            f"raises-{tag}": f"{mods['raises']}:Broker",
            f"nofactory-{tag}": f"{mods['nofactory']}:Broker",
        },
        {
            mods["import"]: "import lrt_no_such_dependency_xyz\n",
            mods["raises"]: (
                "class Broker:\n"
                "    @classmethod\n"
                "    def from_settings(cls, settings):\n"
                "        raise RuntimeError('cannot reach the queue service')\n"
            ),
            mods["nofactory"]: "class Broker:\n    pass\n",
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(ExtensionManager, "ENTRY_POINT_CACHE", {})
    return {"tag": tag, **mods}


def test_unknown_plugin_names_namespace_name_and_installed() -> None:
    with pytest.raises(PluginNotFound) as info:
        load_class(BROKERS, "no-such-broker")
    err = info.value
    assert (err.namespace, err.name) == (BROKERS, "no-such-broker")
    assert "local" in err.installed
    message = str(err)
    for part in (BROKERS, "no-such-broker", "local"):
        assert part in message


def test_unknown_broker_from_settings() -> None:
    with pytest.raises(PluginNotFound, match="kafka") as info:
        load_broker(load_settings(environ={"LRT_BROKER": "kafka"}))
    assert info.value.namespace == BROKERS


def test_unknown_storage_scheme() -> None:
    with pytest.raises(PluginNotFound) as info:
        load_storage(load_settings(environ={"LRT_STORAGE": "ftp://host/path"}))
    assert (info.value.namespace, info.value.name) == (STORAGE, "ftp")
    assert "file" in str(info.value)


def test_local_broker_loads(tmp_path: Path) -> None:
    broker = load_broker(load_settings(environ={"LRT_LOCAL_DB": str(tmp_path / "q.db")}))
    assert isinstance(broker, LocalBroker)
    broker.close()


def test_plugin_whose_import_fails(broken_plugins: dict[str, str]) -> None:
    name = f"broken-import-{broken_plugins['tag']}"
    assert name in installed(BROKERS)
    with pytest.raises(PluginLoadError) as info:
        load_class(BROKERS, name)
    err = info.value
    assert (err.namespace, err.name) == (BROKERS, name)
    assert isinstance(err.cause, ImportError)
    message = str(err)
    assert name in message
    assert "lrt_no_such_dependency_xyz" in message
    assert "Traceback" not in message


def test_plugin_naming_a_missing_attribute(broken_plugins: dict[str, str]) -> None:
    name = f"missing-attr-{broken_plugins['tag']}"
    with pytest.raises(PluginLoadError, match=name) as info:
        load_class(BROKERS, name)
    assert "NoSuchBroker" in str(info.value)


def test_plugin_whose_factory_raises(broken_plugins: dict[str, str]) -> None:
    name = f"raises-{broken_plugins['tag']}"
    settings = load_settings(environ={"LRT_BROKER": name})
    with pytest.raises(PluginLoadError) as info:
        load_broker(settings)
    assert name in str(info.value)
    assert "cannot reach the queue service" in str(info.value)
    assert isinstance(info.value, LrtError)


def test_plugin_without_from_settings(broken_plugins: dict[str, str]) -> None:
    name = f"nofactory-{broken_plugins['tag']}"
    with pytest.raises(PluginLoadError, match="from_settings"):
        load_broker(load_settings(environ={"LRT_BROKER": name}))


def test_describe_installed_lists_core_plugins() -> None:
    infos = {(i.namespace, i.name): i for i in describe_installed()}
    local = infos[(BROKERS, "local")]
    assert local.target == "lrtkit.brokers.local:LocalBroker"
    assert local.distribution == "lrtkit"
    assert local.version
    assert local.error is None
    assert (STORAGE, "file") in infos
    assert infos[(STORAGE, "file")].target == "lrtkit.storage.file:FileStorage"


def test_describe_installed_reports_broken_plugins(broken_plugins: dict[str, str]) -> None:
    infos = {(i.namespace, i.name): i for i in describe_installed()}
    broken = infos[(BROKERS, f"broken-import-{broken_plugins['tag']}")]
    assert broken.error is not None
    assert "lrt_no_such_dependency_xyz" in broken.error
    assert broken.distribution is not None
    assert broken.distribution.startswith("lrt-test-plugins-")
    assert infos[(BROKERS, "local")].error is None


def test_broken_plugins_are_gone_with_their_path() -> None:
    # Runs after the fixtures above have removed their folders from sys.path.
    assert not [n for n in installed(BROKERS) if n.startswith("broken-import-")]
    with pytest.raises(PluginNotFound):
        load_class(BROKERS, "broken-import-anything")
