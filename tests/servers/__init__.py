"""Loopback stand-ins for the Azure services amlrelay talks to.

Each follows the official contract strictly: a stand-in that accepts what the real
service rejects would let a production bug pass the tests. See ``pytest_plugin`` for the
fixtures and the module docstrings for what each server enforces.
"""

from __future__ import annotations

from ._base import RecordedRequest
from .ado import ADO_RESOURCE, AdoError, AdoServer, PipelineDef
from .identity import IdentityServer
from .keyvault import KEYVAULT_RESOURCE, KeyVaultServer
from .tls import TlsMaterial

__all__ = [
    "ADO_RESOURCE",
    "KEYVAULT_RESOURCE",
    "AdoError",
    "AdoServer",
    "IdentityServer",
    "KeyVaultServer",
    "PipelineDef",
    "RecordedRequest",
    "TlsMaterial",
]
