"""The REST operations of an Azure management SDK, read from its generated request builders.

Each ``build_<group>_<operation>_request`` function of an ``azure-mgmt-*`` package states the operation's
HTTP method, URL template and default api-version (generated from the REST spec). The fake ``az`` checks
every ``az rest`` call the scripts make against this list, so a wrong path, method or api-version fails a
test the way ARM would answer 404/400, without a hand-copied route list that could drift.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import TypedDict


class Route(TypedDict):
    operation: str
    method: str
    template: str
    api_version: str


_BUILDER = re.compile(r"^def build_(\w+?)_request\(", re.MULTILINE)
_URL = re.compile(r'_url = "([^"]+)"')
_VERSION = re.compile(r'_params\.pop\("api-version", "([^"]+)"\)')
_METHOD = re.compile(r'HttpRequest\(method="([A-Z]+)"')


def sdk_routes(site_packages: Path, package: str) -> list[Route]:
    """Routes of ``azure.mgmt.<package>`` under ``site_packages`` (its ``operations/_operations.py``)."""
    source = (site_packages / "azure" / "mgmt" / package / "operations" / "_operations.py").read_text()
    starts = [m.start() for m in _BUILDER.finditer(source)] + [len(source)]
    routes: list[Route] = []
    for begin, end in itertools.pairwise(starts):
        block = source[begin:end]
        name, url, version, method = _BUILDER.match(block), _URL.search(block), _VERSION.search(block), \
            _METHOD.search(block)
        if name and url and version and method:
            routes.append(Route(operation=name.group(1), method=method.group(1), template=url.group(1),
                                api_version=version.group(1)))
    return routes


def site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3*/site-packages"))
    assert found, f"no site-packages under {venv}"
    return found[-1]
