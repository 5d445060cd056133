"""Parse every .bicep file under a folder with pycep-parser (run with the infra venv's python).

Prints ``{"files": {relative path: parsed document}, "errors": {relative path: message}}`` as JSON.
Usage: python bicep_probe.py <folder>
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pycep import BicepParser  # type: ignore[import-not-found]


def main(folder: str) -> None:
    root = Path(folder)
    parser = BicepParser()
    files: dict[str, object] = {}
    errors: dict[str, str] = {}
    for path in sorted(root.rglob("*.bicep")):
        name = path.relative_to(root).as_posix()
        try:
            files[name] = parser.parse(file_path=path)
        except Exception as exc:  # pycep raises lark errors of several kinds
            errors[name] = str(exc)[:2000]
    json.dump({"files": files, "errors": errors}, sys.stdout, default=str)


if __name__ == "__main__":
    main(sys.argv[1])
