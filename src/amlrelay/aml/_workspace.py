"""An AML workspace, from its ARM resource id: the one thing a user copies from the portal or ``az``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ._errors import AmlError

_WORKSPACE_ID = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/"
    r"Microsoft\.MachineLearningServices/workspaces/(?P<ws>[^/]+)/?$",
    re.IGNORECASE,
)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{2,32}$")  # workspace name rule (ARM: 3-33 chars)
_RG = re.compile(r"^[-\w._()]{1,90}$")


@dataclass(frozen=True)
class Workspace:
    subscription: str
    resource_group: str
    name: str

    @classmethod
    def parse(cls, resource_id: str) -> Workspace:
        """Parse ``/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.MachineLearningServices/
        workspaces/{name}``; ARM treats the fixed segments case-insensitively, so this does too."""
        text = (resource_id or "").strip()
        match = _WORKSPACE_ID.match(text)
        if match is None:
            raise AmlError(
                f"{text!r} is not the resource id of an AML workspace.", status=None,
                hint="Use the workspace's full ARM id, /subscriptions/<sub>/resourceGroups/<rg>/providers/"
                "Microsoft.MachineLearningServices/workspaces/<name> (az ml workspace show --query id -o tsv).",
            )
        sub, rg, ws = match.group("sub"), match.group("rg"), match.group("ws")
        if not _RG.match(rg) or rg.endswith(".") or not _NAME.match(ws):
            raise AmlError(f"{text!r} has an invalid resource group or workspace name.", status=None,
                           hint="Copy the id from the portal or az ml workspace show instead of typing it.")
        return cls(sub, rg, ws)

    @property
    def arm_path(self) -> str:
        """The canonical resource id (the path under the ARM endpoint)."""
        return (f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}/providers/"
                f"Microsoft.MachineLearningServices/workspaces/{self.name}")

    def studio_url(self, job_name: str, studio_host: str = "https://ml.azure.com") -> str:
        """The SDK's fallback link to a run when the job has no ``services.Studio.endpoint``."""
        return (f"{studio_host.rstrip('/')}/runs/{job_name}?wsid=/subscriptions/{self.subscription}"
                f"/resourcegroups/{self.resource_group}/workspaces/{self.name}")

    def __str__(self) -> str:
        return self.arm_path
