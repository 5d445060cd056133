"""Dump the REST shape of Azure management models as JSON (run with the infra venv's python).

Reads the models' own metadata: ``_attribute_map`` / ``_subtype_map`` (msrest-generated SDKs such as
azure-mgmt-eventgrid, -logic, -authorization) or ``rest_field`` names / ``__mapping__`` (TypeSpec-generated
SDKs such as azure-mgmt-automation, -storage, -keyvault). Output: ``{"api_versions": {package: [...]},
"models": {name: {"fields": {restName: ref}, "discriminator": restName|null, "subtypes": {value: name}}}}``
where a ref is ``{"kind": "model"|"list"|"dict"|"scalar", "name"?: str, "item"?: ref}``.

Usage: python sdk_schema.py module:Class [module:Class ...]
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from typing import Any

MODELS: dict[str, Any] = {}


def _msrest_ref(type_name: str, module: Any) -> dict[str, Any]:
    if type_name.startswith("[") and type_name.endswith("]"):
        return {"kind": "list", "item": _msrest_ref(type_name[1:-1], module)}
    if type_name.startswith("{"):
        return {"kind": "dict"}
    if type_name == "object":
        return {"kind": "dict"}
    cls = getattr(module, type_name, None)
    if cls is not None and hasattr(cls, "_attribute_map"):
        return {"kind": "model", "name": _msrest(cls, module)}
    return {"kind": "scalar"}


def _msrest(cls: Any, module: Any) -> str:
    name = f"{cls.__module__.split('.')[2]}.{cls.__name__}"
    if name in MODELS:
        return name
    MODELS[name] = {}  # placeholder against cycles
    tree: dict[str, Any] = {"fields": {}, "discriminator": None, "subtypes": {}}
    attr_map = getattr(cls, "_attribute_map", {})
    for spec in attr_map.values():
        parts = [p.replace("\\.", ".") for p in re.split(r"(?<!\\)\.", spec["key"])]
        node = tree
        path = name
        for part in parts[:-1]:
            path = f"{path}.{part}"
            ref = node["fields"].setdefault(part, {"kind": "model", "name": path})
            MODELS.setdefault(path, {"fields": {}, "discriminator": None, "subtypes": {}})
            node = MODELS[ref["name"]]
        node["fields"][parts[-1]] = _msrest_ref(spec["type"], module)
    subtype_map = getattr(cls, "_subtype_map", None) or {}
    for attr, mapping in subtype_map.items():
        tree["discriminator"] = attr_map[attr]["key"]
        for value, sub_name in mapping.items():
            sub = getattr(module, sub_name, None)
            if sub is not None:
                tree["subtypes"][value] = _msrest(sub, module)
    MODELS[name] = tree
    return name


def _hybrid_ref(annotation: str, module: Any) -> dict[str, Any]:
    text = annotation.replace("typing.", "")
    found = re.findall(r"_models\.(\w+)", text)
    if text.startswith(("Optional[list[", "list[", "List[", "Optional[List[")) and found:
        return {"kind": "list", "item": _hybrid_ref(f"_models.{found[-1]}", module)}
    if "dict[" in text or "Dict[" in text:
        return {"kind": "dict"}
    if found:
        cls = getattr(module, found[-1], None)
        if (cls is not None and hasattr(cls, "_attr_to_rest_field")) or _is_hybrid(cls):
            return {"kind": "model", "name": _hybrid(cls, module)}
    if text in ("Any", "Optional[Any]") or text == "Any":
        return {"kind": "dict"}
    return {"kind": "scalar"}


def _is_hybrid(cls: Any) -> bool:
    return cls is not None and any(k.__name__ == "Model" and "model_base" in k.__module__ for k in cls.__mro__)


def _annotations(cls: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        out.update(getattr(klass, "__annotations__", {}))
    return out


def _hybrid(cls: Any, module: Any) -> str:
    name = f"{cls.__module__.split('.')[2]}.{cls.__name__}"
    if name in MODELS:
        return name
    MODELS[name] = {}
    try:
        cls()  # computes _attr_to_rest_field
    except TypeError:
        cls.__new__(cls)
    tree: dict[str, Any] = {"fields": {}, "discriminator": None, "subtypes": {}}
    annotations = _annotations(cls)
    for attr, field in cls._attr_to_rest_field.items():
        tree["fields"][field._rest_name] = _hybrid_ref(str(annotations.get(attr, "")), module)
        if getattr(field, "_is_discriminator", False):
            tree["discriminator"] = field._rest_name
    for value, sub in (getattr(cls, "__mapping__", None) or {}).items():
        if sub is not cls:
            tree["subtypes"][value] = _hybrid(sub, module)
    MODELS[name] = tree
    return name


def main(argv: list[str]) -> None:
    roots: dict[str, str] = {}
    api_versions: dict[str, str] = {}
    for spec in argv:
        module_name, _, class_name = spec.partition(":")
        module = importlib.import_module(module_name)
        cls = getattr(module, class_name)
        roots[spec] = _hybrid(cls, module) if _is_hybrid(cls) else _msrest(cls, module)
        package = ".".join(module_name.split(".")[:3])
        config = importlib.import_module(package + "._configuration")
        assert config.__file__ is not None
        with open(config.__file__, encoding="utf-8") as handle:
            source = handle.read()
        versions = re.findall(r'api_version[^=\n]*=\s*kwargs\.pop\("api_version",\s*"([^"]+)"\)', source)
        versions += re.findall(r"api_version = kwargs\.pop\('api_version', \"([^\"]+)\"\)", source)
        if not versions:  # multi-api packages: the version is the sub-package name
            match = re.search(r"\.v(\d{4}_\d{2}_\d{2}(?:_preview)?)\.", module_name)
            versions = [match.group(1).replace("_preview", "-preview").replace("_", "-")] if match else []
        api_versions[spec] = versions[0] if versions else ""
    json.dump({"roots": roots, "api_versions": api_versions, "models": MODELS}, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
