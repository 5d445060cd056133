"""What the ledger says when storage fails it: what went wrong and what to check, never a secret.

Why a module of its own: the right thing to check depends on *how* the ledger reaches storage. A missing
token is the identity's problem (its endpoint, which identity is chosen), a 403 is a role or a key, an
unreachable account is the network; a hint that names another of these sends the reader the wrong way.
And one of those failures hides inside the table client: the token is fetched in its request pipeline, so
an identity endpoint that is down raises the very ``ServiceRequestError`` an unreachable account raises
(and the storage retry policy retries it). :class:`StorageToken` marks it where it happens.
"""

from __future__ import annotations

from typing import Any

from azure.core.credentials import AccessToken, AccessTokenInfo, TokenCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)

from ._ledger_rows import _redact
from .errors import LedgerError

_ROLE = "That identity also needs the role 'Storage Table Data Contributor' on the ledger's storage account."
_ROLE_HINT = (
    "Give the identity the ledger uses (the Automation account's managed identity, or the user-assigned one "
    "AMLRELAY_MANAGED_IDENTITY_CLIENT_ID names; with AMLRELAY_CREDENTIAL=default, your az login) the role "
    "'Storage Table Data Contributor' on the storage account; a new role assignment takes a few minutes to apply."
)
_KEY_HINT = (
    "Check the account key or SAS in AMLRELAY_LEDGER_CONNECTION_STRING (a SAS must allow table read, add, update "
    "and delete, and be unexpired); if the account does not allow key access, use AMLRELAY_LEDGER_TABLE_URL with "
    "the managed identity instead."
)
_REACH_HINT = (
    "Check the ledger's storage endpoint (AMLRELAY_LEDGER_CONNECTION_STRING locally, AMLRELAY_LEDGER_TABLE_URL "
    "in Azure) and the network path to it (the account's firewall); locally, is Azurite running "
    "(scripts/azurite start)?"
)
_TOKEN_HINT = (
    "Check which identity the ledger uses: the Automation account's system-assigned identity must be on "
    "(Account Settings > Identity), or AMLRELAY_MANAGED_IDENTITY_CLIENT_ID must be the client id of a "
    "user-assigned identity attached to the account; from a workstation set AMLRELAY_CREDENTIAL=default and "
    "az login. " + _ROLE
)
_TOKEN_UNREACHABLE_HINT = (
    "In Azure Automation the endpoint (IDENTITY_ENDPOINT) is the sandbox's own: start the job again in a few "
    "minutes; if it keeps failing, check that the account's system-assigned identity is on, or that "
    "AMLRELAY_MANAGED_IDENTITY_CLIENT_ID names a user-assigned identity attached to it. Outside Azure there is "
    "no managed identity: set AMLRELAY_CREDENTIAL=default (az login) or AMLRELAY_LEDGER_CONNECTION_STRING. "
    + _ROLE
)


def _who(client_id: str | None) -> str:
    return f"the user-assigned managed identity {client_id}" if client_id else "the handler's managed identity"


class NoStorageToken(LedgerError):
    """The ledger's identity gave no token for storage. Raised inside the table client's pipeline, which lets
    anything but an ``AzureError`` through untouched; ``Ledger`` turns it into the message for its action."""

    def __init__(self, cause: AzureError, client_id: str | None) -> None:
        super().__init__(f"Ledger: no token for storage from {_who(client_id)}.", hint=_TOKEN_HINT)
        self.cause = cause
        self.client_id = client_id


class StorageToken:
    """The ledger's token credential: the caller's, with a failure to get a token marked as such."""

    def __init__(self, inner: TokenCredential, client_id: str | None = None) -> None:
        self._inner = inner
        self._client_id = client_id

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        try:
            return self._inner.get_token(*scopes, **kwargs)
        except AzureError as exc:
            raise NoStorageToken(exc, self._client_id) from None

    def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        try:
            if hasattr(self._inner, "get_token_info"):
                info: AccessTokenInfo = self._inner.get_token_info(*scopes, options=options)
                return info
            token = self._inner.get_token(*scopes, **dict(options or {}))
        except AzureError as exc:
            raise NoStorageToken(exc, self._client_id) from None
        return AccessTokenInfo(token.token, token.expires_on)


def no_token(cause: BaseException, client_id: str | None, action: str, where: str) -> LedgerError:
    """The identity gave no token: say so, with the identity endpoint's own reason, never storage's hint."""
    what = f"Ledger: no token for storage from {_who(client_id)} to {action} ({where})"
    if isinstance(cause, (ServiceRequestError, ServiceResponseError)):
        return LedgerError(f"{what}: the managed identity endpoint did not answer: {_redact(str(cause))}",
                           hint=_TOKEN_UNREACHABLE_HINT)
    from .auth import _NOT_CONFIGURED_HINT, identity_error

    why = identity_error(cause, what, client_id)  # tells a wrong IDENTITY_HEADER, an unknown identity, a 5xx apart
    return LedgerError(why.message, hint=_TOKEN_HINT if why.hint == _NOT_CONFIGURED_HINT else why.hint)


def storage_error(exc: AzureError, action: str, where: str, *, token: bool) -> LedgerError:
    """A storage failure as a LedgerError. ``token``: the ledger authenticates with a token credential (a
    403 then means a role), not an account key or SAS (a 403 means the key). Only the endpoint is named: the
    connection string, key or SAS never reach a message (``where`` is cut before '?')."""
    status = getattr(exc, "status_code", None)
    if isinstance(exc, ClientAuthenticationError) and status is None:  # no token: the identity endpoint
        return no_token(exc, None, action, where)
    error_code = getattr(exc, "error_code", None) or ""
    code = str(getattr(error_code, "value", error_code))  # an SDK enum prints as TableErrorCode.X on 3.11
    hint, what = _REACH_HINT, "storage error"
    if isinstance(exc, ClientAuthenticationError) or status == 403:
        hint, what = _ROLE_HINT if token else _KEY_HINT, "access denied"
    elif isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        what = "storage unreachable"
    elif status == 404 and code == "TableNotFound":  # the SDK reads the code from the header or the body
        hint = "Create the table (infra deploys it; Ledger.ensure_table() locally)."
    detail = (f"HTTP {status}{' ' + code if code else ''}: {exc.reason or exc.message}"
              if isinstance(exc, HttpResponseError) and status is not None else str(exc))
    return LedgerError(f"Ledger {what} while trying to {action} ({where}): {_redact(detail)}", hint=hint)
