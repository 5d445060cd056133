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
