"""Azure Pipelines logging commands, escaped the way the agent unescapes them.

Escaping follows azure-pipelines-task-lib (``escapedata`` / ``escape``): ``%`` -> ``%AZP25``, CR -> ``%0D``,
LF -> ``%0A`` in data, plus ``;`` -> ``%3B`` and ``]`` -> ``%5D`` in property values. Without it a job name
or an AML error message containing a newline or ``;`` would end the command early or forge another one.
"""

from __future__ import annotations

import re

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


def escape_data(text: str) -> str:
    return text.replace("%", "%AZP25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    return escape_data(text).replace("]", "%5D").replace(";", "%3B")


def set_output(name: str, value: str) -> str:
    """``##vso[task.setvariable]`` with ``isOutput=true``: later jobs read ``dependencies.JOB.outputs['STEP.NAME']``."""
    if not _NAME.match(name):
        raise ValueError(f"invalid ADO variable name {name!r}")
    return f"##vso[task.setvariable variable={name};isOutput=true;isSecret=false]{escape_data(value)}"


def log_issue(kind: str, message: str) -> str:
    """``##vso[task.logissue]``: shows in the run summary; it does not fail the step (the exit code does)."""
    if kind not in ("error", "warning"):
        raise ValueError(kind)
    return f"##vso[task.logissue type={kind}]{escape_data(message)}"


def link(url: str, title: str) -> str:
    """A formatted log line that ADO renders clickable (no logging command needed)."""
    return f"{escape_data(title)}: {escape_data(url)}"


def upload_summary(path: str) -> str:
    """``##vso[task.uploadsummary]``: a Markdown file shown on the run's summary page (the studio links)."""
    return f"##vso[task.uploadsummary]{escape_data(path)}"
