"""Loopback stand-ins for the Azure services amlrelay talks to (ADO, managed identity, Key Vault)."""
