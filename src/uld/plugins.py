"""Agents and env domains of other packages, found through entry points.

A package that provides an agent declares the module that registers it in its pyproject.toml::

    [project.entry-points."uld.agents"]
    mine = "my_package.agent"

(and a domain under ``"uld.envs"``). uld imports these modules when its agent or domain registry is
first read, so the `uld` command, and every `uld train` process of a sweep, know them by name.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from uld.errors import UldError


def load_plugins(group: str) -> None:
    """Import the modules installed packages declare under the entry-point group ``group``; importing one
    registers what it provides. A module that fails to import is a UldError naming it."""
    for entry_point in entry_points(group=group):
        try:
            entry_point.load()
        except Exception as err:  # noqa: BLE001 - any error of a third-party module
            raise UldError(f"the {group} plugin {entry_point.name} ({entry_point.value}) failed to load: {err}; "
                           "fix or uninstall the package that declares it") from err
