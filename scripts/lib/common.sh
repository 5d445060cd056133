# shellcheck shell=bash
# Shared helpers for scripts/deploy, teardown, grant-ado-access and send-test-event.
# Secrets (webhook URI, SAS URLs, tokens) are kept in variables or 0600 temp files, never printed.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export REPO_ROOT
AZ="${AZ:-az}"
PYTHON="${PYTHON:-$REPO_ROOT/.venv/bin/python}"
[[ -x "$PYTHON" ]] || PYTHON="python3"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# az with JSON output; arguments are never echoed (some carry secrets via @file only).
az_json() { "$AZ" "$@" --output json --only-show-errors; }
az_tsv() { "$AZ" "$@" --output tsv --only-show-errors; }

# json_get FILE_OR_- EXPR: read a value from JSON with Python (no jq dependency).
json_get() {
  "$PYTHON" -c 'import json,sys
doc=json.load(sys.stdin)
for part in sys.argv[1].split("."):
    doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    doc = doc.get("value", doc) if isinstance(doc, dict) and set(doc) <= {"type", "value"} else doc
print(doc if not isinstance(doc, (dict, list)) else json.dumps(doc))' "$1"
}

secret_tmp() {
  local file
  file="$(mktemp "${TMPDIR:-/tmp}/amlrelay.XXXXXX")"
  chmod 600 "$file"
  printf '%s\n' "$file"
}

confirm() {
  local answer
  [[ "${ASSUME_YES:-0}" == 1 ]] && return 0
  [[ -t 0 ]] || die "not a terminal: pass --yes to proceed without asking"
  read -r -p "$1 [y/N] " answer
  [[ "$answer" == [yY]* ]]
}

# Automation REST api-version: the one infra/modules/automation/main.bicep deploys with. `az automation` is a
# CLI extension; the scripts use core `az rest` against these operations instead.
export AUTOMATION_API="2024-10-23"

# latest_outputs RG: the outputs (JSON) of the newest succeeded amlrelay deployment in RG, whichever tool made
# it: scripts/deploy (amlrelay-infra-*, amlrelay-packages-*, amlrelay-handler-*) or azd (named after the azd
# environment). A deployment is amlrelay's when its outputs carry `handler` and `systemTopicName`.
latest_outputs() {
  local name
  name="$(az_tsv deployment group list --resource-group "$1" \
    --query "sort_by([?properties.provisioningState=='Succeeded' && properties.outputs.handler && properties.outputs.systemTopicName], &properties.timestamp)[-1].name")"
  [[ -n "$name" ]] || return 1
  az_json deployment group show --resource-group "$1" --name "$name" --query properties.outputs
}

# retry_forbidden WHAT -- CMD...: run CMD; while it fails with 403 (a role assignment made minutes ago that has
# not propagated yet), wait with backoff and say so. Other failures stop at once. Bounded by
# AMLRELAY_RETRY_ATTEMPTS (default 8: 7 waits of 15, 30, 60, 120, 120, 120, 120 s = 585 s, about 10 minutes);
# AMLRELAY_RETRY_SECONDS is the first wait (default 15), doubled up to 120.
retry_forbidden() {
  local what="$1" attempt=1 max="${AMLRELAY_RETRY_ATTEMPTS:-8}" wait="${AMLRELAY_RETRY_SECONDS:-15}" err
  shift 2
  err="$(mktemp "${TMPDIR:-/tmp}/amlrelay-err.XXXXXX")"
  while true; do
    if "$@" 2>"$err"; then rm -f "$err"; return 0; fi
    if (( attempt < max )) && grep -qiE 'AuthorizationPermissionMismatch|AuthorizationFailure|\b403\b|not authorized' "$err"; then
      log "  $what: refused with 403, waiting ${wait}s for the new role assignment to propagate (attempt $attempt/$max; Azure RBAC can take several minutes)"
      sleep "$wait"
      wait=$(( wait * 2 > 120 ? 120 : wait * 2 ))
      attempt=$((attempt + 1))
      continue
    fi
    cat "$err" >&2
    rm -f "$err"
    return 1
  done
}
