// Key Vault for PAT mode only (AMLRELAY_AUTH=pat): Azure RBAC, soft delete, purge protection. The PAT
// secret itself is set by a person (see infra/README.md), never by a template.
metadata name = 'amlrelay key vault'
metadata description = 'RBAC key vault holding the Azure DevOps PAT in PAT mode.'

@description('Required. Key Vault name (3-24 letters, digits and hyphens, globally unique).')
@minLength(3)
@maxLength(24)
param name string

@description('Optional. Azure region. Defaults to the resource group\'s.')
param location string = resourceGroup().location

@description('Optional. Tags applied to the vault.')
param tags object = {}

@description('Optional. Days a deleted vault or secret can be recovered (7-90).')
@minValue(7)
@maxValue(90)
param softDeleteRetentionInDays int = 90

@description('Optional. Public network access. Automation cloud jobs have no fixed egress addresses and are not a trusted service, so the vault must accept public traffic unless you run a Hybrid Runbook Worker with a private endpoint.')
@allowed([
  'Enabled'
  'Disabled'
])
param publicNetworkAccess string = 'Enabled'

@description('Optional. \'recover\' brings back a soft-deleted vault of the same name (purge protection keeps the name reserved for softDeleteRetentionInDays after a teardown); \'default\' creates it.')
@allowed([
  'default'
  'recover'
])
param createMode string = 'default'

resource vault 'Microsoft.KeyVault/vaults@2026-05-15' = {
  //checkov:skip=CKV_AZURE_109:Automation cloud jobs have no fixed egress IPs and are not a trusted service; access is governed by Entra RBAC instead of network ACLs.
  //checkov:skip=CKV_AZURE_189:Same reason: the runbook reads the PAT over the public endpoint (publicNetworkAccess is a parameter for private deployments).
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    createMode: createMode
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: softDeleteRetentionInDays
    enablePurgeProtection: true
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    publicNetworkAccess: publicNetworkAccess
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

@description('The vault\'s resource id.')
output resourceId string = vault.id

@description('The vault\'s name.')
output name string = vault.name

@description('The vault URI (AMLRELAY_KEY_VAULT_URL), with the cloud\'s own suffix.')
output uri string = vault.properties.vaultUri
