"""Baseline for bench/cold_start.py: the straightforward runbook most teams write first.

One script, no package: import azure-identity, azure-keyvault-secrets and requests, read a PAT from Key
Vault, post one "Run Pipeline" request. No validation, routing, ledger or error handling: it is the
floor amlrelay's runbook is measured against, not an example to follow.
"""

import base64
import json
import os
import sys

import requests
from azure.identity import ManagedIdentityCredential
from azure.keyvault.secrets import SecretClient

event = json.loads(sys.argv[1])[0]
secret = SecretClient(os.environ["KV_URL"], ManagedIdentityCredential(), verify_challenge_resource=False)
pat = secret.get_secret("ado-pat").value or ""
auth = "Basic " + base64.b64encode(f":{pat}".encode()).decode()
body = {"templateParameters": {"modelName": str(event["data"]["ModelName"]),
                               "modelVersion": str(event["data"]["ModelVersion"])}}
response = requests.post(f"{os.environ['ADO_ORG_URL']}/mlops/_apis/pipelines/20/runs",
                         params={"api-version": "7.1"}, json=body, headers={"Authorization": auth}, timeout=30)
print(response.status_code)
