"""Credentials for ADO: an Entra token from the managed identity (default), or a PAT kept in Key Vault.

Both are built lazily and imported lazily: a dry run or a batch with nothing to trigger never loads
azure-identity, and the PAT is read from Key Vault once per job, not once per event. Neither the token
nor the PAT ever appears in an exception message or in output; what errors *do* name is the identity
(client id, object id from the token's claims), because that is what an ADO admin must grant access to.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

from .errors import AuthError

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

ADO_RESOURCE = "499b84ac-1321-427f-aa17-267ca6975798"
"""The Azure DevOps application id; the same in every cloud that hosts ADO Services."""


class AdoCredential(Protocol):
    def authorization(self) -> str:
        """The value of the ``Authorization`` header for the next ADO call."""

    def describe(self) -> str:
        """Who ADO sees, in words an ADO administrator can act on."""

    def remedy(self, status: int) -> str:
        """What to do when ADO answers ``status`` (401/403) to this credential."""


def managed_identity(client_id: str | None, *, kind: str = "managed-identity") -> TokenCredential:
    """The handler's identity. ``kind="default"`` (DefaultAzureCredential: az login, environment...) is for
    running amlrelay's commands from an operator's machine; handlers in Azure use the managed identity."""
    if kind == "default":
        from azure.identity import DefaultAzureCredential

        return DefaultAzureCredential(managed_identity_client_id=client_id)
    from azure.identity import ManagedIdentityCredential

    return ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()


_NOT_CONFIGURED_HINT = ("Turn on the Automation account's system-assigned identity (Account Settings > Identity), "
                        "or set AMLRELAY_MANAGED_IDENTITY_CLIENT_ID to a user-assigned identity attached to it.")
_ENDPOINT_STATUS = re.compile(r"\(\w+\) (\d{3}), ")  # MSAL's App Service error: "(invalid_scope) 401, message"
_BARE_401 = re.compile(r"\b(401)\b.*(?:Unauthorized|IDENTITY-HEADER|secret token header)", re.IGNORECASE)


def identity_error(exc: BaseException, what: str, client_id: str | None = None) -> AuthError:
    """Explain why the identity endpoint gave no token. azure-identity reports every App Service-protocol
    failure (Automation's endpoint) as "managed identity configuration not found", even when the endpoint
    answered; the status MSAL keeps in the message tells the cases apart: a 401 is a wrong
    ``IDENTITY_HEADER``, a 400 an identity the account does not have, a 5xx the endpoint's own trouble."""
    text = _first_line(exc)
    found = _ENDPOINT_STATUS.search(text) or _BARE_401.search(text)  # a non-JSON 401 body reads differently
    status = int(found.group(1)) if found else None
    if status == 401:
        return AuthError(
            f"{what}: the managed identity endpoint (IDENTITY_ENDPOINT) refused the request with HTTP 401, "
            "because the IDENTITY_HEADER value this job sent is not the one Automation gave the sandbox.",
            hint="Do not set IDENTITY_HEADER yourself (as a variable, in the runbook or on a Hybrid Worker): "
            "Automation sets it for each job. Start the job again without overriding it.",
        )
    if status == 400 and "AADSTS500011" in text:
        return AuthError(
            f"{what}: Entra ID knows no resource by the name the token was asked for (AADSTS500011).",
            hint="Check the setting the token's audience comes from: AMLRELAY_ARM_URL / AMLRELAY_ARM_AUDIENCE "
            "(your cloud's ARM endpoint) or AMLRELAY_ADO_RESOURCE.",
        )
    if status == 400 and client_id:
        return AuthError(
            f"{what}: the managed identity endpoint does not know the user-assigned identity {client_id} "
            "(HTTP 400).",
            hint="Attach that identity to the Automation account, or fix AMLRELAY_MANAGED_IDENTITY_CLIENT_ID.",
        )
    if status is not None and status >= 500:
        return AuthError(f"{what}: the managed identity endpoint failed with HTTP {status}.",
                         hint="This is Automation's own endpoint: start the job again in a few minutes.")
    return AuthError(f"{what}: {text}", hint=_NOT_CONFIGURED_HINT)


def _identity_words(client_id: str | None) -> str:
    return f"the user-assigned managed identity {client_id}" if client_id else "the handler's managed identity"


class EntraCredential:
    """Bearer tokens for ADO from an azure-identity credential; azure-identity caches and refreshes them."""

    def __init__(self, credential: TokenCredential, *, client_id: str | None = None,
                 resource: str = ADO_RESOURCE) -> None:
        self._credential = credential
        self._client_id = client_id
        self._scope = f"{resource}/.default"
        self._claims: dict[str, str] = {}

    def authorization(self) -> str:
        from azure.core.exceptions import AzureError

        try:
            token = self._credential.get_token(self._scope).token
        except AzureError as exc:
            raise identity_error(exc, f"No Entra token for ADO from {_identity_words(self._client_id)}",
                                 self._client_id) from None
        self._claims = _claims(token)
        return f"Bearer {token}"

    def describe(self) -> str:
        who = _identity_words(self._client_id)
        oid = self._claims.get("oid")
        app = self._claims.get("appid") or self._claims.get("azp")
        details = ", ".join(part for part in (f"object id {oid}" if oid else "",
                                               f"application id {app}" if app else "") if part)
        return f"{who} ({details})" if details else who

    def remedy(self, status: int) -> str:
        if status == 401:
            return ("Add this identity to the ADO organization as a user with Basic access "
                    "(scripts/grant-ado-access does it, or Organization settings > Users > Add).")
        # What ADO checks (scripts/grant-ado-access grants exactly this): Queue builds, plus Edit queue build
        # configuration for queue-time variables or free-text templateParameters.
        return ("Give this identity 'Queue builds' on the pipeline, and 'Edit queue build configuration' if the "
                "route sends variables or templateParameters (scripts/grant-ado-access grants exactly these; or "
                "Pipelines > ... > Manage security).")


class KeyVaultPatCredential:
    """A PAT read once from Key Vault (with the managed identity) and sent as HTTP Basic."""

    def __init__(self, vault_url: str, secret_name: str, credential: TokenCredential) -> None:
        self._vault_url = vault_url
        self._secret_name = secret_name
        self._credential = credential
        self._header: str | None = None
        self._lock = threading.Lock()

    def authorization(self) -> str:
        with self._lock:
            if self._header is None:
                pat = self._read_pat()
                self._header = "Basic " + base64.b64encode(f":{pat}".encode()).decode("ascii")
            return self._header

    def _read_pat(self) -> str:
        from azure.core.exceptions import (
            AzureError,
            ClientAuthenticationError,
            HttpResponseError,
            ResourceNotFoundError,
        )
        from azure.keyvault.secrets import SecretClient

        host = urlsplit(self._vault_url).hostname or ""
        # Challenge-resource verification stops a token leaking to a look-alike vault host; only a
        # loopback test vault cannot pass it, because its challenge names vault.azure.net.
        client = SecretClient(self._vault_url, self._credential,
                              verify_challenge_resource=host not in {"127.0.0.1", "localhost", "::1"})
        where = f"secret {self._secret_name!r} in Key Vault {self._vault_url}"
        try:
            value = client.get_secret(self._secret_name).value
        except ResourceNotFoundError:
            raise AuthError(f"The {where} does not exist.",
                            hint="Store the ADO PAT there (az keyvault secret set) or fix "
                            "AMLRELAY_PAT_SECRET_NAME.") from None
        except HttpResponseError as exc:
            if exc.status_code is None and isinstance(exc, ClientAuthenticationError):  # no token at all
                raise identity_error(exc, f"No token to read the {where}") from None
            if exc.status_code in (401, 403):
                raise AuthError(
                    f"Key Vault refused to give the {where} to the handler's identity (HTTP {exc.status_code}).",
                    hint="Grant the Automation account's managed identity the 'Key Vault Secrets User' role on "
                    "the vault (RBAC), then start the job again.",
                ) from None
            raise AuthError(f"Reading the {where} failed: {_first_line(exc)}",
                            hint="Check the vault URL and its network rules.") from None
        except AzureError as exc:
            raise AuthError(f"Reading the {where} failed: {_first_line(exc)}",
                            hint="Check AMLRELAY_KEY_VAULT_URL, the vault's firewall and the identity.") from None
        except ValueError:
            # the SDK's own checks: a host that is not the vault its challenge names (e.g. a private-link name
            # or an alias) gets no token. Not an AmlRelayError, this would stop the job as a "bug" with the
            # event's claim held, and the SDK's message suggests a constructor argument nobody can pass here.
            raise AuthError(f"Not reading the {where}: that host did not prove to be the vault Key Vault's answer "
                            "names, so the identity's token was not sent to it.",
                            hint="Set AMLRELAY_KEY_VAULT_URL to the vault's own URL as the portal shows it "
                            "(https://<name>.vault.azure.net, or your cloud's vault domain), not a private-link "
                            "or alias name.") from None
        if not value:
            raise AuthError(f"The {where} is empty.", hint="Store the ADO PAT as the secret's value.")
        return value

    def describe(self) -> str:
        return f"the PAT stored in Key Vault secret {self._secret_name!r}"

    def remedy(self, status: int) -> str:
        if status == 401:
            return "The PAT is expired or revoked: create a new one with scope 'Build (Read & execute)' and " \
                   "store it in the secret."
        return "The PAT's owner may not queue this pipeline, or the PAT lacks scope 'Build (Read & execute)'."


def _claims(token: str) -> dict[str, str]:
    """Non-secret identity claims (oid, appid) from a JWT's payload, to name the identity in errors."""
    try:
        payload = token.split(".")[1]
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: str(data[k]) for k in ("oid", "appid", "azp") if isinstance(data.get(k), str)}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
