//! Provider keys (`/api/providers/{provider}/keys`, the flat `GET /api/keys`): the pushed
//! value, the deterministic id, the wire types.

use super::*;

impl BifrostClient {
    // ---- provider keys ------------------------------------------------------------------------

    pub(super) async fn pk_get(
        &self,
        provider: &str,
        id: &str,
    ) -> Result<ProviderKeyJson, ProviderError> {
        self.pk_get_json(provider, id).await
    }

    /// `GET /api/providers/{provider}/keys/{id}`, decoded as `T` (the typed key, or the raw
    /// object an update starts from).
    pub(super) async fn pk_get_json<T: serde::de::DeserializeOwned>(
        &self,
        provider: &str,
        id: &str,
    ) -> Result<T, ProviderError> {
        self.call(
            "get_provider_key",
            Idempotency::Safe,
            Method::GET,
            &pk_path(provider, Some(id))?,
            None,
        )
        .await?
        .json()
    }

    pub(super) async fn pk_list(&self, provider: &str) -> Result<Vec<ProviderKey>, ProviderError> {
        if provider.is_empty() {
            // No parent: the read-only flat list of every provider's keys.
            let resp = self
                .call(
                    "list_all_provider_keys",
                    Idempotency::Safe,
                    Method::GET,
                    "/api/keys",
                    None,
                )
                .await?;
            let rows: Vec<FlatKeyRow> = resp.json()?;
            return Ok(rows.into_iter().map(FlatKeyRow::into_key).collect());
        }
        let resp = self
            .call(
                "list_provider_keys",
                Idempotency::Safe,
                Method::GET,
                &pk_path(provider, None)?,
                None,
            )
            .await?;
        let list: ProviderKeyList = resp.json()?;
        Ok(list
            .keys
            .into_iter()
            .map(|k| k.into_key(provider))
            .collect())
    }

    /// Who holds a key name, from the flat list (for a clear 409 message).
    pub(super) async fn pk_name_holder(&self, name: &str) -> Option<FlatKeyRow> {
        let resp = self
            .call(
                "list_all_provider_keys",
                Idempotency::Safe,
                Method::GET,
                "/api/keys",
                None,
            )
            .await
            .ok()?;
        let rows: Vec<FlatKeyRow> = resp.json().ok()?;
        rows.into_iter().find(|r| r.name == name)
    }

    /// PUT a provider key; `secret`: the pushed value the body carries, if any.
    pub(super) async fn pk_put(
        &self,
        provider: &str,
        id: &str,
        body: &Value,
        secret: Option<&SecretString>,
    ) -> Result<ProviderKey, ProviderError> {
        let resp = self
            .call_with(
                "update_provider_key",
                Idempotency::Safe,
                Method::PUT,
                &pk_path(provider, Some(id))?,
                Some(body),
                secret,
                &[],
            )
            .await?;
        Ok(resp.json::<ProviderKeyJson>()?.into_key(provider))
    }

    pub(super) async fn pk_push(
        &self,
        s: &KeySettings,
        value: &SecretString,
        existing: Option<&str>,
    ) -> Result<ProviderKey, ProviderError> {
        let b = s.bifrost.clone().unwrap_or_default();
        let provider = b
            .provider
            .clone()
            .filter(|p| !p.trim().is_empty())
            .ok_or_else(|| {
                ProviderError::Rejected(
                    "spec.bifrost.provider is required for a provider key (e.g. openai)".into(),
                )
            })?;
        if value.expose_secret().is_empty() {
            return Err(ProviderError::Rejected(
                "the value in spec.source.secretRef is empty".into(),
            ));
        }
        let id = match existing {
            Some(id) => id.to_string(),
            None => {
                if s.uid.is_empty() {
                    return Err(ProviderError::Rejected(
                        "the ApiKey has no uid to derive the provider key id from".into(),
                    ));
                }
                provider_key_id(&s.uid, &provider)
            }
        };
        let body = provider_key_body(s, &b, &id, value);
        if existing.is_some() {
            match self.pk_put(&provider, &id, &body, Some(value)).await {
                // Deleted behind keysmith's back: register it again under the same id (an
                // unknown provider answers 404 to the create too).
                Err(ProviderError::NotFound(_)) => {}
                other => return other,
            }
        }
        let resp = self
            .call_with(
                "create_provider_key",
                Idempotency::Unsafe,
                Method::POST,
                &pk_path(&provider, None)?,
                Some(&body),
                Some(value),
                &[StatusCode::CONFLICT],
            )
            .await?;
        if resp.status.is_success() {
            return Ok(resp.json::<ProviderKeyJson>()?.into_key(&provider));
        }
        let err = error_with(&resp, Some(value));
        if resp.status != StatusCode::CONFLICT {
            return Err(err);
        }
        // 409: either our own id (a repeated create) or a name another key holds.
        match self.pk_get(&provider, &id).await {
            Ok(_) => self.pk_put(&provider, &id, &body, Some(value)).await,
            Err(ProviderError::NotFound(_)) => {
                let holder = self.pk_name_holder(&s.name).await;
                Err(ProviderError::Rejected(match holder {
                    // Another key holds the name: said without naming that key (its id and
                    // provider belong to whoever made it, maybe another tenant).
                    Some(h) if h.id() != id => format!(
                        "the name {:?} is taken by another key at the gateway; Bifrost key names are unique across providers: choose another spec.displayName",
                        http::snippet(&s.name),
                    ),
                    _ => format!(
                        "the gateway refused provider key {id} for {provider} ({err}): its id or the name {:?} is taken by another key, possibly under another provider",
                        s.name
                    ),
                }))
            }
            Err(e) => Err(e),
        }
    }

    pub(super) async fn pk_update(
        &self,
        provider: &str,
        id: &str,
        d: &KeySettings,
        fields: &[Field],
    ) -> Result<ProviderKey, ProviderError> {
        // A provider-key PUT is a full object: start from what the gateway has. The redacted
        // value (and redacted config secrets) sent back are kept by the gateway.
        let mut body: Value = self.pk_get_json(provider, id).await?;
        if !body.is_object() {
            return Err(ProviderError::Malformed(
                "provider key is not a JSON object".into(),
            ));
        }
        let b = d.bifrost.clone().unwrap_or_default();
        for f in fields {
            match f {
                Field::DisplayName => body["name"] = json!(d.name),
                Field::Disabled => body["enabled"] = json!(!d.disabled),
                Field::Models => body["models"] = json!(provider_key_models(&d.models)),
                Field::Extras => {
                    if let Some(w) = b.weight {
                        body["weight"] = json!(w);
                    }
                    // `description` is the gateway's own error/status text (published `Key`
                    // schema): never written, whatever spec.bifrost.description says.
                    copy_cloud_configs(&mut body, &b);
                }
                _ => {}
            }
        }
        self.pk_put(provider, id, &body, None).await
    }
}

pub(super) fn pk_path(provider: &str, id: Option<&str>) -> Result<String, ProviderError> {
    Ok(match id {
        Some(id) => format!("/api/providers/{}/keys/{}", seg(provider)?, seg(id)?),
        None => format!("/api/providers/{}/keys", seg(provider)?),
    })
}

/// The provider-key id keysmith uses for an ApiKey: a name-based UUID (version 5 layout, SHA-1)
/// of the ApiKey's uid and the upstream provider, so that every push of the same ApiKey targets
/// the same key and a repeated create is recognised by its 409.
pub fn provider_key_id(uid: &str, provider: &str) -> String {
    let digest = Sha1::digest(format!(
        "keysmith.dev/bifrost-provider-key/{uid}/{provider}"
    ));
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    uuid::Uuid::from_bytes(b).hyphenated().to_string()
}

/// How a provider key that allows no model (`"models": []`, Bifrost v1.5+) is observed.
pub const DENY_ALL_MODELS: &str = "(no models: Bifrost v1.5+ reads [] as deny-all)";

/// Models of a provider key: empty (the neutral "every model") is sent as `["*"]`, never as
/// `[]`, which Bifrost v1.5+ reads as "no model".
pub(super) fn provider_key_models(models: &[String]) -> Vec<String> {
    if models.is_empty() {
        vec!["*".into()]
    } else {
        models.to_vec()
    }
}

pub(super) fn provider_key_body(
    s: &KeySettings,
    b: &BifrostKeySpec,
    id: &str,
    value: &SecretString,
) -> Value {
    let mut body = json!({
        "id": id,
        "name": s.name,
        "value": value.expose_secret(),
        "models": provider_key_models(&s.models),
        "weight": b.weight.unwrap_or(1.0),
        "enabled": !s.disabled,
    });
    // No `description`: on a provider key it is the gateway's error/status text (see
    // [`key_problem`]); spec.bifrost.description stays in the ApiKey.
    copy_cloud_configs(&mut body, b);
    body
}

#[derive(Deserialize)]
pub(super) struct ProviderKeyList {
    #[serde(default)]
    keys: Vec<ProviderKeyJson>,
}

#[derive(Deserialize)]
pub(super) struct ProviderKeyJson {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    value: Option<SecretField>,
    #[serde(default)]
    models: Option<Vec<String>>,
    #[serde(default)]
    weight: Option<f64>,
    #[serde(default)]
    enabled: Option<bool>,
    /// `success`, `list_models_failed`, … (written by the gateway).
    #[serde(default)]
    status: Option<String>,
    /// The gateway's error or status text for the key (not the user's: the schema gives the
    /// user no description on provider keys).
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    created_at: Option<String>,
}

impl ProviderKeyJson {
    pub(super) fn into_key(self, provider: &str) -> ProviderKey {
        // `["*"]` is every model (the neutral empty list). Since Bifrost v1.5 `[]` is *no*
        // model, which no ApiKey spec asks for: it is observed as [`DENY_ALL_MODELS`], which
        // differs from every desired list, so the key is corrected rather than taken as "all".
        let models = self.models.map(|m| {
            if m.iter().any(|x| x == "*") {
                Vec::new()
            } else if m.is_empty() {
                vec![DENY_ALL_MODELS.to_string()]
            } else {
                m
            }
        });
        // The gateway redacts the value (4 + 24 `*` + 4): keep its ends as the hint.
        let hint = self.value.and_then(|v| {
            let v = v.0.expose_secret().to_string();
            let ends: String = v.chars().take(4).collect();
            if v.chars().count() >= 32 && !ends.contains('*') {
                let last: String = v
                    .chars()
                    .rev()
                    .take(4)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                Some(format!("{ends}…{last}"))
            } else {
                None
            }
        });
        let mut extras = Extras::new();
        extras.insert("family".to_string(), FAMILY_PROVIDER.to_string());
        extras.insert("provider".to_string(), provider.to_string());
        extras.insert("weight".to_string(), self.weight.unwrap_or(1.0).to_string());
        // What the gateway says of the key, for [`key_problem`]; masked, then bounded (an
        // answer is not trusted to be short; masking after the cut would leave a credential
        // the cut split in clear) and never compared with the spec.
        if let Some(status) = self.status.filter(|s| !s.trim().is_empty()) {
            extras.insert(
                EXTRA_STATUS.to_string(),
                http::snippet(&mask_tokens(&status)),
            );
            if let Some(d) = self.description.filter(|d| !d.trim().is_empty()) {
                extras.insert(
                    EXTRA_STATUS_TEXT.to_string(),
                    http::snippet(&mask_tokens(&d)),
                );
            }
        }
        ProviderKey {
            expires_at: None,
            id: self.id,
            name: self.name,
            hint,
            created_at: parse_time(&self.created_at),
            last_used_at: None,
            usage: None,
            active: true,
            observed: ObservedSettings {
                disabled: Some(!self.enabled.unwrap_or(true)),
                expires_at: None,
                limit: None,
                allowed_ips: None,
                models,
            },
            attempt: None,
            secret: None,
            extras,
        }
    }
}

/// A row of the read-only `GET /api/keys` (field set varies by version: `key_id` or `id`).
#[derive(Deserialize)]
pub(super) struct FlatKeyRow {
    #[serde(default)]
    key_id: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    models: Option<Vec<String>>,
    #[serde(default)]
    weight: Option<f64>,
    #[serde(default)]
    enabled: Option<bool>,
}

impl FlatKeyRow {
    pub(super) fn id(&self) -> String {
        self.key_id
            .clone()
            .or_else(|| self.id.clone())
            .unwrap_or_default()
    }

    pub(super) fn into_key(self) -> ProviderKey {
        let provider = self.provider.clone().unwrap_or_default();
        ProviderKeyJson {
            id: self.id(),
            name: self.name,
            value: None,
            models: self.models,
            weight: self.weight,
            enabled: self.enabled,
            status: None,
            description: None,
            created_at: None,
        }
        .into_key(&provider)
    }
}

/// The Azure/Vertex/Bedrock configurations of the ApiKey's bifrost block, as the gateway takes them.
pub(super) fn copy_cloud_configs(body: &mut serde_json::Value, b: &BifrostKeySpec) {
    for (k, v) in [
        ("azure_key_config", &b.azure_key_config),
        ("vertex_key_config", &b.vertex_key_config),
        ("bedrock_key_config", &b.bedrock_key_config),
    ] {
        if let Some(v) = v {
            body[k] = v.clone();
        }
    }
}

/// Extras key: the provider key's `status` as the gateway answered it.
const EXTRA_STATUS: &str = "status";
/// Extras key: the gateway's `description` (error/status text) of a provider key with a status.
const EXTRA_STATUS_TEXT: &str = "statusText";

/// What the gateway reports wrong with a provider key: any `status` other than `success` (e.g.
/// `list_models_failed`, which means the upstream refused the value), with the gateway's text.
/// Words that look like credentials are masked: the text is an upstream's error, which may
/// quote what it was sent.
pub fn key_problem(key: &ProviderKey) -> Option<String> {
    if key.extras.get("family").map(String::as_str) != Some(FAMILY_PROVIDER) {
        return None;
    }
    let status = key.extras.get(EXTRA_STATUS)?.trim();
    if status.is_empty() || status.eq_ignore_ascii_case("success") {
        return None;
    }
    let text = key
        .extras
        .get(EXTRA_STATUS_TEXT)
        .map(|t| format!(": {}", mask_tokens(t)))
        .unwrap_or_default();
    Some(format!(
        "the gateway reports provider key {} as {}{text}",
        key.id,
        mask_tokens(status)
    ))
}

/// Replace every word that could be a credential (16 characters or more of letters, digits,
/// `-`, `_`, `.`, with a digit in it) by `[REDACTED]`.
pub fn mask_tokens(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        let secretish = word.chars().count() >= 16 && word.chars().any(|c| c.is_ascii_digit());
        out.push_str(if secretish { "[REDACTED]" } else { word });
        word.clear();
    };
    for c in s.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}
