//! Virtual keys (`/api/governance/virtual-keys`): requests, the answer's wire types and how a
//! virtual key maps to a neutral [`ProviderKey`].

use super::*;

impl BifrostClient {
    // ---- virtual keys -------------------------------------------------------------------------

    pub(super) async fn vk_get(&self, id: &str) -> Result<VirtualKey, ProviderError> {
        let resp = self
            .call(
                "get_virtual_key",
                Idempotency::Safe,
                Method::GET,
                &format!("{VK_PATH}/{}", seg(id)?),
                None,
            )
            .await?;
        Ok(resp.json::<VkEnvelope>()?.virtual_key)
    }

    pub(super) async fn vk_list_page(
        &self,
        cursor: Option<&str>,
    ) -> Result<KeyPage, ProviderError> {
        let offset: usize = match cursor {
            None => 0,
            Some(c) => c
                .parse()
                .map_err(|_| ProviderError::Rejected(format!("bad page cursor {c:?}")))?,
        };
        let resp = self
            .call(
                "list_virtual_keys",
                Idempotency::Safe,
                Method::GET,
                &format!("{VK_PATH}?limit={PAGE_SIZE}&offset={offset}"),
                None,
            )
            .await?;
        let list: VkList = resp.json()?;
        let count = list.count.unwrap_or(list.virtual_keys.len());
        let next = match list.total_count {
            // A gateway that ignores paging answers everything at once, without total_count.
            Some(total) if count > 0 && offset + count < total => {
                Some((offset + count).to_string())
            }
            _ => None,
        };
        Ok(KeyPage {
            keys: list
                .virtual_keys
                .into_iter()
                .map(VirtualKey::into_key)
                .collect(),
            next,
        })
    }

    pub(super) async fn vk_create(&self, s: &KeySettings) -> Result<CreatedKey, ProviderError> {
        let b = s.bifrost.clone().unwrap_or_default();
        let mut body = json!({
            "name": s.name,
            "description": compose_description(b.description.as_deref(), s.attempt.as_deref()),
            "is_active": !s.disabled,
        });
        if let Some(l) = &s.limit {
            body["budgets"] = budgets_json(l)?;
        }
        if let Some(pc) = desired_provider_configs(s) {
            body["provider_configs"] = provider_configs_json(&pc);
        }
        if let Some(rl) = &b.rate_limit {
            body["rate_limit"] = rate_limit_json(rl);
        }
        if let Some(e) = s.expires_at {
            body["expires_at"] = json!(rfc3339(e));
        }
        let resp = self
            .call(
                "create_virtual_key",
                Idempotency::Unsafe,
                Method::POST,
                VK_PATH,
                Some(&body),
            )
            .await?;
        created_from(resp.json::<VkEnvelope>()?.virtual_key, "create")
    }

    pub(super) async fn vk_update(
        &self,
        id: &str,
        d: &KeySettings,
        fields: &[Field],
    ) -> Result<ProviderKey, ProviderError> {
        let b = d.bifrost.clone().unwrap_or_default();
        let mut body = json!({});
        for f in fields {
            match f {
                Field::DisplayName => body["name"] = json!(d.name),
                Field::Disabled => body["is_active"] = json!(!d.disabled),
                // An RFC 3339 moment sets the expiry, "" clears it (UpdateVirtualKeyRequest).
                Field::ExpiresAt | Field::Ttl => {
                    body["expires_at"] = json!(d.expires_at.map(rfc3339).unwrap_or_default())
                }
                Field::LimitAmount | Field::LimitReset => {
                    // Budgets replace the key's budgets; an empty list removes them.
                    body["budgets"] = match &d.limit {
                        Some(l) => budgets_json(l)?,
                        None => json!([]),
                    };
                }
                Field::Models | Field::Extras => {
                    if let Some(pc) = desired_provider_configs(d) {
                        body["provider_configs"] = provider_configs_json(&pc);
                    }
                    if *f == Field::Extras {
                        if let Some(rl) = &b.rate_limit {
                            body["rate_limit"] = rate_limit_json(rl);
                        }
                        if let Some(desc) = &b.description {
                            // Keep the create attempt marker the key was made with.
                            let attempt = match &d.attempt {
                                Some(a) => Some(a.clone()),
                                None => {
                                    let cur = self.vk_get(id).await?;
                                    parse_description(cur.description.as_deref().unwrap_or("")).1
                                }
                            };
                            body["description"] =
                                json!(compose_description(Some(desc), attempt.as_deref()));
                        }
                    }
                }
                // Not supported at Bifrost; the controller never asks (see capabilities).
                _ => {}
            }
        }
        if body.as_object().is_some_and(|o| o.is_empty()) {
            return Ok(self.vk_get(id).await?.into_key());
        }
        let resp = self
            .call(
                "update_virtual_key",
                Idempotency::Safe,
                Method::PUT,
                &format!("{VK_PATH}/{}", seg(id)?),
                Some(&body),
            )
            .await?;
        let key = resp.json::<VkEnvelope>()?.virtual_key.into_key();
        if body.get("expires_at").is_some() {
            expiry_taken(&key, d.expires_at)?;
        }
        Ok(key)
    }

    pub(super) async fn vk_rotate(&self, id: &str) -> Result<CreatedKey, ProviderError> {
        // Safe to repeat: every answer holds the key's current value, so a retried rotate only
        // rotates once more and still returns the value that works.
        let result = self
            .call(
                "rotate_virtual_key",
                Idempotency::Safe,
                Method::POST,
                &format!("{VK_PATH}/{}/rotate", seg(id)?),
                // The published operation takes no request body.
                None,
            )
            .await;
        let resp = match result {
            Ok(r) => r,
            Err(ProviderError::NotFound(msg)) => {
                // Either the key is gone or this gateway predates the rotate route.
                return match self.vk_get(id).await {
                    Ok(_) => Err(no_rotate()),
                    Err(ProviderError::NotFound(_)) => Err(ProviderError::NotFound(msg)),
                    Err(e) => Err(e),
                };
            }
            Err(ProviderError::Unsupported(_)) => return Err(no_rotate()),
            Err(e) => return Err(e),
        };
        if !is_json(&resp) {
            // Some builds serve the web UI for unknown routes.
            return Err(no_rotate());
        }
        created_from(resp.json::<VkEnvelope>()?.virtual_key, "rotate")
    }

    pub(super) async fn vk_delete(&self, id: &str) -> Result<(), ProviderError> {
        self.call(
            "delete_virtual_key",
            Idempotency::Safe,
            Method::DELETE,
            &format!("{VK_PATH}/{}", seg(id)?),
            None,
        )
        .await
        .map(|_| ())
    }
}

/// Extras key: when the gateway last rotated the virtual key's value (`rotated_at`).
pub(super) const EXTRA_ROTATED_AT: &str = "rotatedAt";

/// How much later than `since` a `rotated_at` must be to count as a rotation keysmith did not
/// make (both are whole seconds; `since` is in the gateway's clock).
const ROTATED_AT_SLACK_SECS: i64 = 2;

/// Whether virtual key `key` was rotated outside keysmith (see
/// [`KeyBackend::rotated_outside`]). The value (or its redacted ends) the gateway reports
/// decides when it reports one; otherwise a `rotated_at` after `since`.
pub fn rotated_outside(
    key: &ProviderKey,
    held: &SecretString,
    since: Option<chrono::DateTime<chrono::Utc>>,
) -> Option<String> {
    if key.extras.get("family").map(String::as_str) != Some(FAMILY_VIRTUAL) {
        return None;
    }
    let held = held.expose_secret();
    if let Some(h) = key.hint.as_deref() {
        let same = if is_redacted(h) {
            let head: String = h.chars().take_while(|c| *c != '*').collect();
            let tail: String = h
                .chars()
                .rev()
                .take_while(|c| *c != '*')
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            held.starts_with(&head) && held.ends_with(&tail)
        } else {
            mask(held, 10).as_deref() == Some(h)
        };
        return (!same).then(|| {
            format!(
                "the gateway's value of virtual key {} is not the one the Secret holds",
                key.id
            )
        });
    }
    let rotated = key
        .extras
        .get(EXTRA_ROTATED_AT)
        .and_then(|r| parse_time(&Some(r.clone())))?;
    let since = since?;
    (rotated > since + chrono::Duration::seconds(ROTATED_AT_SLACK_SECS)).then(|| {
        format!(
            "the gateway rotated virtual key {} at {}, after keysmith got the value the Secret holds",
            key.id,
            rfc3339(rotated)
        )
    })
}

/// The hint of a value the gateway answered redacted (`sk-b****…1234`): at most the 10 leading
/// characters before its first `*` and the 4 trailing ones after its last, around `****` (the
/// answer is not trusted to be short, nor to hide more than a hint shows); all stars: `****`.
/// [`rotated_outside`] compares its ends with the Secret's value.
fn redacted_hint(v: &str) -> Option<String> {
    let head: String = v.chars().take_while(|c| *c != '*').take(10).collect();
    let tail: Vec<char> = v.chars().rev().take_while(|c| *c != '*').take(4).collect();
    let tail: String = tail.into_iter().rev().collect();
    Some(format!("{head}****{tail}"))
}

/// A moment as the gateway takes it (RFC 3339, seconds, `Z`).
pub(super) fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The answer to an update that set `expires_at` must carry it: a build that predates
/// virtual-key expiry ignores the field, and asking again at every refresh would never end.
pub(super) fn expiry_taken(
    key: &ProviderKey,
    want: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<(), ProviderError> {
    let have = key.observed.expires_at.flatten();
    let same = match (have, want) {
        (Some(a), Some(b)) => (a - b).num_seconds().abs() <= 1,
        (None, None) => true,
        _ => false,
    };
    if same {
        return Ok(());
    }
    Err(ProviderError::Unsupported(match want {
        Some(_) => "this Bifrost gateway ignores virtual-key expires_at (builds before virtual-key expiry): upgrade it, or remove spec.expiresAt/spec.ttl".into(),
        None => "this Bifrost gateway kept the virtual key's expires_at after keysmith cleared it".into(),
    }))
}

pub(super) fn no_rotate() -> ProviderError {
    ProviderError::Unsupported(
        "this Bifrost gateway has no virtual-key rotate route (POST /api/governance/virtual-keys/{id}/rotate); upgrade it or replace the key".into(),
    )
}

/// The description of a keysmith-made virtual key: the user's text, then the marker with the
/// create attempt (`team-a chat | managed by keysmith (attempt 5f2c…)`).
pub fn compose_description(user: Option<&str>, attempt: Option<&str>) -> String {
    let marker = match attempt {
        Some(a) if !a.is_empty() => format!("{MARKER} (attempt {a})"),
        _ => MARKER.to_string(),
    };
    match user.map(str::trim).filter(|u| !u.is_empty()) {
        Some(u) => format!("{u} | {marker}"),
        None => marker,
    }
}

/// Split a description into the user's text and the create attempt (inverse of
/// [`compose_description`]; a description keysmith did not write is all user text).
pub fn parse_description(d: &str) -> (String, Option<String>) {
    let Some(pos) = d.rfind(MARKER) else {
        return (d.to_string(), None);
    };
    let tail = &d[pos + MARKER.len()..];
    let attempt = if tail.is_empty() {
        None
    } else if let Some(a) = tail
        .strip_prefix(" (attempt ")
        .and_then(|t| t.strip_suffix(')'))
    {
        Some(a.to_string())
    } else {
        // The marker words appear inside the user's own text.
        return (d.to_string(), None);
    };
    let user = d[..pos].trim_end();
    let user = user.strip_suffix('|').unwrap_or(user).trim_end();
    (user.to_string(), attempt)
}

/// Neutral reset → Bifrost budget window.
pub fn reset_window(r: Option<LimitReset>) -> &'static str {
    match r {
        Some(LimitReset::Daily) => "1d",
        Some(LimitReset::Weekly) => "1w",
        Some(LimitReset::Monthly) => "1M",
        Some(LimitReset::Never) | None => NEVER_WINDOW,
    }
}

/// Bifrost budget window → neutral reset (`None` for windows keysmith does not name, e.g. `1h`).
pub fn window_reset(w: &str) -> Option<LimitReset> {
    match w {
        "1d" => Some(LimitReset::Daily),
        "1w" => Some(LimitReset::Weekly),
        "1M" => Some(LimitReset::Monthly),
        NEVER_WINDOW => Some(LimitReset::Never),
        _ => None,
    }
}

pub(super) fn budgets_json(l: &Limit) -> Result<Value, ProviderError> {
    let amount: f64 = l.amount.parse().map_err(|_| {
        ProviderError::Rejected(format!("spec.limit.amount {:?} is not a number", l.amount))
    })?;
    Ok(json!([{ "max_limit": amount, "reset_duration": reset_window(l.reset) }]))
}

pub(super) fn rate_limit_json(rl: &BifrostRateLimit) -> Value {
    let mut v = json!({});
    if let Some(x) = rl.token_max_limit {
        v["token_max_limit"] = json!(x);
    }
    if let Some(x) = &rl.token_reset_duration {
        v["token_reset_duration"] = json!(x);
    }
    if let Some(x) = rl.request_max_limit {
        v["request_max_limit"] = json!(x);
    }
    if let Some(x) = &rl.request_reset_duration {
        v["request_reset_duration"] = json!(x);
    }
    v
}

/// One provider entry of a virtual key, as keysmith compares them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProviderConfigView {
    pub provider: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_models: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_ids: Option<Vec<String>>,
}

/// The provider configs a virtual key should have, or `None` when the ApiKey leaves them to the
/// gateway (neither `spec.models` nor `spec.bifrost.providerConfigs` is set).
///
/// * `spec.bifrost.providerConfigs` is sent as written; an empty `allowedModels` or `keyIDs`
///   means all (`["*"]`) and an absent weight is 1.
/// * Otherwise `spec.models` (`provider/model`, `provider/*`) is grouped by provider into one
///   config per provider, allowed to use every key of that provider.
pub fn desired_provider_configs(s: &KeySettings) -> Option<Vec<ProviderConfigView>> {
    let all = || vec!["*".to_string()];
    let configs = s
        .bifrost
        .as_ref()
        .map(|b| b.provider_configs.as_slice())
        .unwrap_or_default();
    if !configs.is_empty() {
        return Some(
            configs
                .iter()
                .map(|c| ProviderConfigView {
                    provider: c.provider.clone(),
                    weight: Some(c.weight.unwrap_or(1.0)),
                    allowed_models: Some(if c.allowed_models.is_empty() {
                        all()
                    } else {
                        c.allowed_models.clone()
                    }),
                    key_ids: Some(if c.key_ids.is_empty() {
                        all()
                    } else {
                        c.key_ids.clone()
                    }),
                })
                .collect(),
        );
    }
    if s.models.is_empty() {
        return None;
    }
    let mut by_provider: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for m in &s.models {
        if let Some((p, model)) = m.split_once('/') {
            by_provider
                .entry(p.to_string())
                .or_default()
                .insert(model.to_string());
        }
    }
    Some(
        by_provider
            .into_iter()
            .map(|(provider, models)| {
                let models: Vec<String> = if models.contains("*") {
                    all()
                } else {
                    models.into_iter().collect()
                };
                ProviderConfigView {
                    provider,
                    weight: Some(1.0),
                    allowed_models: Some(models),
                    key_ids: Some(all()),
                }
            })
            .collect(),
    )
}

pub(super) fn provider_configs_json(pc: &[ProviderConfigView]) -> Value {
    Value::Array(
        pc.iter()
            .map(|c| {
                json!({
                    "provider": c.provider,
                    "weight": c.weight.unwrap_or(1.0),
                    "allowed_models": c.allowed_models.clone().unwrap_or_default(),
                    "key_ids": c.key_ids.clone().unwrap_or_default(),
                })
            })
            .collect(),
    )
}

pub(super) fn created_from(vk: VirtualKey, what: &str) -> Result<CreatedKey, ProviderError> {
    let secret = vk
        .value
        .as_ref()
        .map(|v| v.0.clone())
        .filter(|v| !v.expose_secret().is_empty() && !is_redacted(v.expose_secret()))
        .ok_or_else(|| {
            ProviderError::Malformed(format!(
                "the gateway answered the virtual-key {what} without the key's value"
            ))
        })?;
    Ok(CreatedKey {
        key: vk.into_key(),
        secret,
    })
}

#[derive(Deserialize)]
pub(super) struct VkEnvelope {
    virtual_key: VirtualKey,
}

#[derive(Deserialize)]
pub(super) struct VkList {
    #[serde(default)]
    virtual_keys: Vec<VirtualKey>,
    #[serde(default)]
    count: Option<usize>,
    #[serde(default)]
    total_count: Option<usize>,
}

#[derive(Deserialize)]
pub(super) struct VirtualKey {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    value: Option<SecretField>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default = "yes")]
    is_active: bool,
    #[serde(default)]
    provider_configs: Option<Vec<VkProviderConfig>>,
    #[serde(default)]
    budgets: Option<Vec<Budget>>,
    /// Older builds: one budget.
    #[serde(default)]
    budget: Option<Budget>,
    #[serde(default)]
    rate_limit: Option<VkRateLimit>,
    #[serde(default)]
    created_at: Option<String>,
    /// Newer builds (Bifrost PR #4887): requests are refused after it; null or absent: never.
    #[serde(default)]
    expires_at: Option<String>,
    /// Newer builds: when the value was last rotated (the rotate route, or the gateway's own
    /// scheduled rotation).
    #[serde(default)]
    rotated_at: Option<String>,
}

pub(super) fn yes() -> bool {
    true
}

#[derive(Deserialize)]
pub(super) struct VkProviderConfig {
    provider: String,
    #[serde(default)]
    weight: Option<f64>,
    #[serde(default)]
    allowed_models: Option<Vec<String>>,
    /// Older gateways echo the request's `key_ids`; the published schema answers with
    /// `allow_all_keys` and `keys` (table rows) instead.
    #[serde(default)]
    key_ids: Option<Vec<String>>,
    #[serde(default)]
    allow_all_keys: Option<bool>,
    #[serde(default)]
    keys: Option<Vec<TableKeyRef>>,
}

#[derive(Deserialize)]
pub(super) struct TableKeyRef {
    #[serde(default)]
    key_id: Option<String>,
}

impl VkProviderConfig {
    /// The key ids the config allows, as a request spells them (`["*"]`: all).
    pub(super) fn key_ids(&self) -> Option<Vec<String>> {
        if let Some(ids) = &self.key_ids {
            return Some(ids.clone());
        }
        if self.allow_all_keys == Some(true) {
            return Some(vec!["*".to_string()]);
        }
        match (&self.keys, self.allow_all_keys) {
            (Some(keys), _) => Some(keys.iter().filter_map(|k| k.key_id.clone()).collect()),
            (None, Some(false)) => Some(Vec::new()),
            (None, _) => None,
        }
    }
}

#[derive(Deserialize)]
pub(super) struct Budget {
    #[serde(default)]
    max_limit: f64,
    #[serde(default)]
    reset_duration: String,
    #[serde(default)]
    current_usage: f64,
    /// When the counter last reset (RFC 3339); the next reset is one window later.
    #[serde(default)]
    last_reset: Option<String>,
}

impl Budget {
    /// When the counter resets next: `last_reset` plus the window (Bifrost counts `M` as 30
    /// days and `Y` as 365); `None` when either is unreadable.
    pub(super) fn resets_at(&self) -> Option<String> {
        let last = parse_time(&self.last_reset)?;
        let w = self.reset_duration.as_str();
        let unit = w.chars().last()?;
        let n: i64 = w[..w.len() - unit.len_utf8()].parse().ok()?;
        let secs = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            'M' => 30 * 86_400,
            'Y' => 365 * 86_400,
            _ => return None,
        };
        let at = last.checked_add_signed(chrono::Duration::try_seconds(n.checked_mul(secs)?)?)?;
        Some(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    }
}

#[derive(Deserialize)]
pub(super) struct VkRateLimit {
    #[serde(default, deserialize_with = "crate::integral")]
    token_max_limit: Option<i64>,
    #[serde(default)]
    token_reset_duration: Option<String>,
    #[serde(default, deserialize_with = "crate::integral")]
    request_max_limit: Option<i64>,
    #[serde(default)]
    request_reset_duration: Option<String>,
}

impl VirtualKey {
    pub(super) fn into_key(self) -> ProviderKey {
        let (user_desc, attempt) = parse_description(self.description.as_deref().unwrap_or(""));
        let mut budgets = self.budgets.unwrap_or_default();
        if budgets.is_empty() {
            budgets.extend(self.budget);
        }
        let limit = budgets.first().map(|b| Limit {
            amount: decimal_from_f64(b.max_limit.max(0.0)),
            reset: window_reset(&b.reset_duration),
        });
        let usage = if budgets.is_empty() {
            None
        } else {
            let mut u = Usage {
                unit: Some("USD".into()),
                ..Default::default()
            };
            for b in &budgets {
                let used = Some(decimal_from_f64(b.current_usage.max(0.0)));
                match window_reset(&b.reset_duration) {
                    Some(LimitReset::Daily) => u.daily = used,
                    Some(LimitReset::Weekly) => u.weekly = used,
                    Some(LimitReset::Monthly) => u.monthly = used,
                    Some(LimitReset::Never) => u.total = used,
                    None => {}
                }
            }
            let first = &budgets[0];
            u.limit_remaining = Some(decimal_from_f64(
                (first.max_limit - first.current_usage).max(0.0),
            ));
            u.resets_at = first.resets_at();
            Some(u)
        };
        let (secret, hint) = match self.value.map(|v| v.0) {
            Some(v) if is_redacted(v.expose_secret()) => (None, redacted_hint(v.expose_secret())),
            Some(v) if !v.expose_secret().is_empty() => {
                let hint = mask(v.expose_secret(), 10);
                (Some(v), hint)
            }
            _ => (None, None),
        };
        let mut extras = Extras::new();
        extras.insert("family".to_string(), FAMILY_VIRTUAL.to_string());
        extras.insert("description".to_string(), user_desc);
        if let Some(r) = parse_time(&self.rotated_at) {
            extras.insert(EXTRA_ROTATED_AT.to_string(), rfc3339(r));
        }
        if let Some(pcs) = self.provider_configs {
            let views: Vec<ProviderConfigView> = pcs
                .into_iter()
                .map(|c| ProviderConfigView {
                    key_ids: c.key_ids(),
                    provider: c.provider,
                    weight: c.weight,
                    allowed_models: c.allowed_models,
                })
                .collect();
            if let Ok(s) = serde_json::to_string(&views) {
                extras.insert("providerConfigs".to_string(), s);
            }
        }
        if let Some(rl) = self.rate_limit {
            let rl = BifrostRateLimit {
                token_max_limit: rl.token_max_limit,
                token_reset_duration: rl.token_reset_duration.filter(|s| !s.is_empty()),
                request_max_limit: rl.request_max_limit,
                request_reset_duration: rl.request_reset_duration.filter(|s| !s.is_empty()),
            };
            if let Ok(s) = serde_json::to_string(&rl) {
                extras.insert("rateLimit".to_string(), s);
            }
        }
        ProviderKey {
            expires_at: None,
            id: self.id,
            name: self.name,
            hint,
            created_at: parse_time(&self.created_at),
            last_used_at: None,
            usage,
            active: true,
            observed: ObservedSettings {
                disabled: Some(!self.is_active),
                // Null or absent: never expires (a build without expiry answers the same; an
                // update that sets one checks the answer, see `expiry_taken`).
                expires_at: Some(parse_time(&self.expires_at)),
                limit: Some(limit),
                allowed_ips: None,
                // Model allow-lists live in the provider configs: compared in extras_drift.
                models: None,
            },
            attempt,
            secret,
            extras,
        }
    }
}
