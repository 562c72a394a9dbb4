//! UCloud client (placeholder until the provider lands).

use async_trait::async_trait;

use super::*;
use crate::api::UCloudProvider;

pub struct UCloudClient {
    caps: Capabilities,
}

impl UCloudClient {
    pub fn new(
        _spec: &UCloudProvider,
        _creds: Credentials,
        _opts: ClientOptions,
    ) -> Result<Self, String> {
        Err("the ucloud provider is not implemented yet".into())
    }
}

#[async_trait]
impl KeyBackend for UCloudClient {
    fn provider(&self) -> ProviderType {
        ProviderType::UCloud
    }
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }
    async fn verify(&self) -> Result<(), ProviderError> {
        Err(ProviderError::Unsupported("not implemented".into()))
    }
    async fn create(&self, _s: &KeySettings) -> Result<CreatedKey, ProviderError> {
        Err(ProviderError::Unsupported("not implemented".into()))
    }
    async fn list_page(
        &self,
        _scope: &KeyScope,
        _cursor: Option<&str>,
    ) -> Result<KeyPage, ProviderError> {
        Err(ProviderError::Unsupported("not implemented".into()))
    }
    async fn update(
        &self,
        _scope: &KeyScope,
        _id: &str,
        _d: &KeySettings,
        _f: &[Field],
    ) -> Result<ProviderKey, ProviderError> {
        Err(ProviderError::Unsupported("not implemented".into()))
    }
    async fn revoke(&self, _scope: &KeyScope, _id: &str) -> Result<(), ProviderError> {
        Err(ProviderError::Unsupported("not implemented".into()))
    }
}
