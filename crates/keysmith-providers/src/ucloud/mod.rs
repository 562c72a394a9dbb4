//! UCloud ModelVerse ("UMInfer") API keys, reached with UCloud's signed `Action` API.
//!
//! One URL serves every action. The Go SDK's shape is followed exactly: `POST` to the base URL
//! with an `application/x-www-form-urlencoded` body holding every parameter (including
//! `PublicKey` and `Signature`) and `Action` repeated in the query string. The signature is
//! `hex(sha1(name1 value1 name2 value2 … privateKey))` over all parameters but `Signature`,
//! sorted by name in byte order (see [`signature`]).
//!
//! | operation | action | retried |
//! |---|---|---|
//! | create | `CreateUMInferAPIKey` | no (the SDK marks it non-retryable) |
//! | list | `ListUMInferAPIKey` (`Offset`/`Limit`, max 100) | yes |
//! | update | `UpdateUMInferAPIKey` (partial) | yes |
//! | delete | `DeleteUMInferAPIKey` | yes |
//!
//! There is no get: the trait's default filters the listing. The listing returns the secret
//! (`Key`), so a lost Secret is restored from it without minting a new key.
//!
//! Errors come back as HTTP 200 with `RetCode != 0`; see [`retcode_error`] for the mapping and
//! `docs/providers/ucloud.md` for the codes keysmith assumes where UCloud documents none.
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | the client: signed calls through [`HttpClient::call_json`], the `KeyBackend` impl, validation |
//! | `signing.rs` | the request signature and value encoding ([`signature`], [`Params`]) |
//! | `wire.rs` | settings as action parameters, a listed `APIKey` as a [`ProviderKey`] |
//! | `errors.rs` | the `RetCode` envelope, the codes and their typed errors, HTTP error statuses |

use async_trait::async_trait;
use reqwest::Method;
use secrecy::ExposeSecret;
use serde_json::Value;

use super::http::{HttpClient, Idempotency};
use super::*;
use keysmith_api::{LastUsedSource, UCloudProvider};

/// The management API of UCloud's China site (the Go SDK's default).
pub const DEFAULT_BASE_URL: &str = UCloudProvider::DEFAULT_BASE_URL;
/// Largest page `ListUMInferAPIKey` serves.
pub const PAGE_SIZE: usize = 100;
/// Most entries `IPWhitelist` takes.
pub const MAX_WHITELIST: usize = 100;

mod errors;
mod signing;
mod wire;

use errors::http_error;
pub use errors::{retcode, retcode_error, retcode_is_documented, unknown_code_on_a_read};
pub use signing::{encode_bool, signature, Params};
use wire::{extra, provider_key, UCloudSettings};
pub use wire::{split_whitelist, valid_whitelist_entry};

/// The UCloud ModelVerse key backend.
pub struct UCloudClient {
    http: HttpClient,
    public_key: String,
    private_key: SecretString,
    project_id: Option<String>,
    caps: Capabilities,
    /// Settings UCloud kept after keysmith sent them empty to remove them: `(key id, parameter)`
    /// → the value it kept. Not sent empty again while the key still reports that value, so a
    /// UCloud that ignores empty values costs one update per key and setting, not one per
    /// reconcile (see [`UCloudClient::cleared_or_kept`]).
    kept: std::sync::Mutex<std::collections::HashMap<(String, &'static str), String>>,
}

/// Most entries [`UCloudClient::kept`] holds (one per key and setting UCloud would not clear).
const MAX_KEPT: usize = 10_000;

/// Whether sending `param=value` would change `key` as it is reported (what is compared is
/// what the listing reads back: sets for lists, canonical IPs, normalised decimals).
fn differs(key: &ProviderKey, param: &str, value: &str) -> bool {
    let extra = |k: &str| key.extras.get(k).map(String::as_str).unwrap_or_default();
    let decimal = |v: &str| normalize_decimal(v).unwrap_or_else(|| v.to_string());
    match param {
        "Name" => key.name != value,
        "ModelverseDisabled" => key.observed.disabled != Some(value == "1"),
        "SandBoxDisabled" => extra(extra::SANDBOX_DISABLED) != (value == "1").to_string(),
        "GrantAllModels" => extra(extra::GRANT_ALL_MODELS) != value,
        "GrantedModels" => {
            let mut want: Vec<String> = serde_json::from_str(value).unwrap_or_default();
            let mut have = key.observed.models.clone().unwrap_or_default();
            want.sort();
            want.dedup();
            have.sort();
            have.dedup();
            want != have
        }
        "DailyLimitAmount" | "MonthlyLimitAmount" => {
            decimal(&reported(key, param)) != decimal(value)
        }
        "IPWhitelist" => {
            ip_set(&split_whitelist(value))
                != ip_set(key.observed.allowed_ips.as_deref().unwrap_or_default())
        }
        _ => true,
    }
}

/// The parameters keysmith sends empty to remove a setting, and how a listed key reports each.
const CLEARABLE: [&str; 3] = ["DailyLimitAmount", "MonthlyLimitAmount", "IPWhitelist"];

/// What `key` reports for a [`CLEARABLE`] parameter (`""`: not set).
fn reported(key: &ProviderKey, param: &str) -> String {
    match param {
        "DailyLimitAmount" => key.extras.get(extra::DAILY_LIMIT).cloned(),
        "MonthlyLimitAmount" => key.extras.get(extra::MONTHLY_LIMIT).cloned(),
        _ => key.observed.allowed_ips.as_ref().map(|ips| ips.join("\n")),
    }
    .unwrap_or_default()
}

impl std::fmt::Debug for UCloudClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UCloudClient")
            .field("http", &self.http)
            .field("public_key", &self.public_key)
            .field("private_key", &"[REDACTED]")
            .field("project_id", &self.project_id)
            .finish()
    }
}

const CAPABILITIES: Capabilities = Capabilities {
    mint: true,
    adopt: AdoptMode::ReadBack,
    push: false,
    supported: &[
        Field::DisplayName,
        Field::Disabled,
        Field::LimitAmount,
        Field::LimitReset,
        Field::AllowedIps,
        Field::Models,
        Field::Extras,
        Field::KeyRef,
    ],
    mutable: &[
        Field::DisplayName,
        Field::Disabled,
        Field::LimitAmount,
        Field::LimitReset,
        Field::AllowedIps,
        Field::Models,
        Field::Extras,
    ],
    secret_readable: true,
    rotation: RotationStrategy::MINT,
};

impl UCloudClient {
    pub fn new(
        spec: &UCloudProvider,
        creds: Credentials,
        opts: ClientOptions,
    ) -> Result<Self, String> {
        let public_key = spec.public_key.trim().to_string();
        if public_key.is_empty() {
            return Err("ucloud.publicKey must not be empty".into());
        }
        let private_key = creds.get("privateKey")?.clone();
        if private_key.expose_secret().trim().is_empty() {
            return Err("the ucloud private key Secret value is empty".into());
        }
        Ok(UCloudClient {
            http: HttpClient::new(ProviderType::UCloud, DEFAULT_BASE_URL, opts)?,
            public_key,
            private_key,
            project_id: spec
                .project_id
                .as_deref()
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_string),
            caps: CAPABILITIES,
            kept: Default::default(),
        })
    }

    /// The full, signed parameter set of one action.
    fn signed(&self, action: &str, mut params: Params) -> Params {
        params.insert("Action".into(), action.into());
        params.insert("PublicKey".into(), self.public_key.clone());
        if let Some(p) = &self.project_id {
            params.insert("ProjectId".into(), p.clone());
        }
        let sig = signature(&params, self.private_key.expose_secret());
        params.insert("Signature".into(), sig);
        params
    }

    /// Call one action and return the answer's JSON object (RetCode 0).
    async fn call(
        &self,
        operation: &'static str,
        idempotency: Idempotency,
        action: &'static str,
        params: Params,
    ) -> Result<Value, ProviderError> {
        self.call_coded(operation, idempotency, action, params)
            .await
            .map_err(|(e, _)| e)
    }

    /// [`Self::call`], with the RetCode of a business error alongside the typed error.
    async fn call_coded(
        &self,
        operation: &'static str,
        idempotency: Idempotency,
        action: &'static str,
        params: Params,
    ) -> Result<Value, (ProviderError, Option<i64>)> {
        let params = self.signed(action, params);
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params.iter())
            .finish();
        let path = format!("/?Action={action}");
        let api = super::http::Api {
            headers: Vec::new(),
            error: &http_error,
        };
        let call = super::http::Call::new(operation, idempotency, &Method::POST, &path).form(&body);
        let resp = self
            .http
            .call_json(call, &api)
            .await
            .map_err(|e| (e, None))?;
        errors::envelope(action, &resp)
    }

    /// After an update that sent `clearing` empty: `key` (read back) when UCloud removed them
    /// all. A setting UCloud kept is remembered (and not sent empty again while the key reports
    /// the same value) and reported as [`ProviderError::Unsupported`], with `kept` (those not
    /// sent this time for that reason): the ApiKey says what to do instead of keysmith sending
    /// the same update on every reconcile.
    fn cleared_or_kept(
        &self,
        id: &str,
        key: &ProviderKey,
        clearing: &[&'static str],
        mut kept: Vec<(&'static str, String)>,
    ) -> Result<ProviderKey, ProviderError> {
        {
            let mut memory = self.kept.lock().unwrap();
            for c in clearing {
                let now = reported(key, c);
                let slot = (id.to_string(), *c);
                if now.is_empty() {
                    memory.remove(&slot);
                } else {
                    if !kept.iter().any(|(k, _)| k == c) {
                        kept.push((*c, now.clone()));
                    }
                    if memory.len() < MAX_KEPT || memory.contains_key(&slot) {
                        memory.insert(slot, now);
                    }
                }
            }
        }
        if kept.is_empty() {
            return Ok(key.clone());
        }
        let names: Vec<&str> = kept.iter().map(|(c, _)| *c).collect();
        Err(ProviderError::Unsupported(format!(
            "UCloud kept {} of key {id} after keysmith sent it empty to remove it (UCloud documents \
             no way to remove a cap or the IP whitelist); keysmith will not send it again: \
             remove it in the UCloud console, set a value in the ApiKey, or rotate the key",
            names.join(", ")
        )))
    }

    /// Problems with the settings, each naming the field (what [`KeyBackend::validate`] reports).
    fn problems(settings: &KeySettings) -> Vec<String> {
        let mut out = Vec::new();
        let block = settings.ucloud.clone().unwrap_or_default();
        if let Some(l) = &settings.limit {
            match l.reset {
                Some(LimitReset::Daily) | Some(LimitReset::Monthly) => {}
                Some(LimitReset::Weekly) => out.push(
                    "spec.limit.reset: UCloud caps spend per day or per month, not per week; \
                     use reset: daily or reset: monthly"
                        .into(),
                ),
                Some(LimitReset::Never) | None => out.push(
                    "spec.limit: UCloud has no lifetime cap; set reset: daily or reset: monthly"
                        .into(),
                ),
            }
            if l.amount == "0" {
                out.push(
                    "spec.limit.amount: UCloud reports an unset cap as 0, so a cap of 0 cannot be \
                     kept in sync; use spec.disabled: true to stop the key"
                        .into(),
                );
            }
        }
        for (field, value, reset) in [
            (
                "spec.ucloud.dailyLimitAmount",
                &block.daily_limit_amount,
                LimitReset::Daily,
            ),
            (
                "spec.ucloud.monthlyLimitAmount",
                &block.monthly_limit_amount,
                LimitReset::Monthly,
            ),
        ] {
            let Some(raw) = value else { continue };
            match normalize_decimal(raw) {
                None => out.push(format!(
                    "{field}: {raw:?} is not a non-negative decimal such as 10 or 12.50"
                )),
                Some(d) if d == "0" => out.push(format!(
                    "{field}: UCloud reports an unset cap as 0, so a cap of 0 cannot be kept in \
                     sync; use spec.disabled: true to stop the key"
                )),
                Some(d) => {
                    if let Some(l) = settings.limit.as_ref().filter(|l| l.reset == Some(reset)) {
                        if l.amount != d {
                            out.push(format!(
                                "{field} ({d}) and spec.limit ({} {}) set the same UCloud cap to \
                                 different amounts; keep one of them",
                                l.amount,
                                reset.as_str()
                            ));
                        }
                    }
                }
            }
        }
        if let Some(mv) = block.modelverse_disabled {
            if mv != settings.disabled {
                out.push(format!(
                    "spec.ucloud.modelverseDisabled ({mv}) contradicts spec.disabled ({}): both \
                     set UCloud's ModelverseDisabled; use spec.disabled alone",
                    settings.disabled
                ));
            }
        }
        if settings.allowed_ips.len() > MAX_WHITELIST {
            out.push(format!(
                "spec.allowedIPs: UCloud takes at most {MAX_WHITELIST} entries, got {}",
                settings.allowed_ips.len()
            ));
        }
        for ip in &settings.allowed_ips {
            if !valid_whitelist_entry(ip) {
                out.push(format!(
                    "spec.allowedIPs: {ip:?} is not an IPv4 address, range (a.b.c.d-e.f.g.h) or \
                     IPv4 CIDR block; UCloud's IP whitelist takes only those"
                ));
            }
        }
        for m in &settings.models {
            if m.trim().is_empty() {
                out.push("spec.models: model names must not be empty".into());
            } else if m.eq_ignore_ascii_case("all") {
                out.push(
                    "spec.models: \"all\" is not a model; leave spec.models empty to allow every \
                     model"
                        .into(),
                );
            }
        }
        out
    }
}

#[async_trait]
impl KeyBackend for UCloudClient {
    fn http(&self) -> Option<&HttpClient> {
        Some(&self.http)
    }
    fn last_use(&self, _key: &ProviderKey) -> LastUsedSource {
        // No last-use time; every key reports DailyUsedAmount/MonthlyUsedAmount. The request
        // logs (ListUMInferRequestLogs) would tell more but need a Region and a call of their own.
        LastUsedSource::UsageDelta
    }
    fn provider(&self) -> ProviderType {
        ProviderType::UCloud
    }

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn validate(&self, settings: &KeySettings) -> Vec<String> {
        Self::problems(settings)
    }

    async fn verify(&self) -> Result<(), ProviderError> {
        let mut p = Params::new();
        p.insert("Offset".into(), "0".into());
        p.insert("Limit".into(), "1".into());
        self.call("verify", Idempotency::Safe, "ListUMInferAPIKey", p)
            .await
            .map(|_| ())
    }

    async fn create(&self, settings: &KeySettings) -> Result<CreatedKey, ProviderError> {
        let u = UCloudSettings::from_settings(settings);
        let mut p = Params::new();
        u.put_name(&mut p);
        u.put_disabled(&mut p);
        u.put_sandbox(&mut p);
        u.put_limits(&mut p, false);
        u.put_models(&mut p);
        u.put_whitelist(&mut p, false);
        let v = self
            .call("create", Idempotency::Unsafe, "CreateUMInferAPIKey", p)
            .await?;
        let data = v.get("Data").filter(|d| d.is_object()).ok_or_else(|| {
            ProviderError::Malformed("CreateUMInferAPIKey answer has no Data object".into())
        })?;
        let mut key = provider_key(data)?;
        let secret = key.secret.take().ok_or_else(|| {
            ProviderError::Malformed("CreateUMInferAPIKey answer holds no Key".into())
        })?;
        key.secret = Some(secret.clone());
        Ok(CreatedKey { key, secret })
    }

    async fn list_page(
        &self,
        _scope: &KeyScope,
        cursor: Option<&str>,
    ) -> Result<KeyPage, ProviderError> {
        let offset: usize = match cursor {
            None => 0,
            Some(c) => c
                .parse()
                .map_err(|_| ProviderError::Rejected(format!("bad list cursor {c:?}")))?,
        };
        let mut p = Params::new();
        p.insert("Offset".into(), offset.to_string());
        p.insert("Limit".into(), PAGE_SIZE.to_string());
        let v = self
            .call("list", Idempotency::Safe, "ListUMInferAPIKey", p)
            .await?;
        let items = match v.get("Data") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a.clone(),
            // The published example answers an empty listing with `"Data": {}`.
            Some(Value::Object(o)) if o.is_empty() => Vec::new(),
            Some(_) => {
                return Err(ProviderError::Malformed(
                    "ListUMInferAPIKey Data is not an array".into(),
                ))
            }
        };
        let keys = items
            .iter()
            .map(provider_key)
            .collect::<Result<Vec<_>, _>>()?;
        let seen = offset + items.len();
        // The SDK declares no TotalCount for this action: page until a short page, but use a
        // total if the server sends one.
        let more = match v.get("TotalCount").and_then(Value::as_u64) {
            Some(total) => (seen as u64) < total && !items.is_empty(),
            None => items.len() >= PAGE_SIZE,
        };
        Ok(KeyPage {
            keys,
            next: more.then(|| seen.to_string()),
        })
    }

    async fn update(
        &self,
        scope: &KeyScope,
        id: &str,
        desired: &KeySettings,
        fields: &[Field],
    ) -> Result<ProviderKey, ProviderError> {
        let u = UCloudSettings::from_settings(desired);
        let mut p = Params::new();
        p.insert("KeyId".into(), id.to_string());
        let has = |f: Field| fields.contains(&f);
        if has(Field::DisplayName) {
            u.put_name(&mut p);
        }
        if has(Field::Disabled) || has(Field::Extras) {
            u.put_disabled(&mut p);
        }
        if has(Field::Extras) {
            u.put_sandbox(&mut p);
        }
        if has(Field::LimitAmount) || has(Field::LimitReset) || has(Field::Extras) {
            u.put_limits(&mut p, true);
        }
        if has(Field::Models) || has(Field::Extras) {
            u.put_models(&mut p);
        }
        if has(Field::AllowedIps) {
            u.put_whitelist(&mut p, true);
        }
        // Removing a setting is sending it empty (UCloud documents no other way); one UCloud
        // kept before is not sent empty again while the key still reports what it kept.
        let clearing: Vec<&'static str> = CLEARABLE
            .into_iter()
            .filter(|c| p.get(*c).is_some_and(String::is_empty))
            .collect();
        let mut kept: Vec<(&'static str, String)> = Vec::new();
        let remembered: Vec<(&'static str, String)> = {
            let mut memory = self.kept.lock().unwrap();
            // A value set again ends what was remembered of it.
            for c in CLEARABLE {
                if p.get(c).is_some_and(|v| !v.is_empty()) {
                    memory.remove(&(id.to_string(), c));
                }
            }
            clearing
                .iter()
                .filter_map(|c| memory.get(&(id.to_string(), *c)).map(|v| (*c, v.clone())))
                .collect()
        };
        if !remembered.is_empty() {
            let now = self.get(scope, id).await?;
            for (c, v) in remembered {
                if reported(&now, c) == v {
                    p.remove(c);
                    kept.push((c, v));
                }
            }
            // The drift that brought this update may be nothing but the kept settings: send
            // only what differs from the key as it is, so that is no write at all.
            p.retain(|name, value| name == "KeyId" || differs(&now, name, value));
        }
        if p.len() > 1 {
            self.call("update", Idempotency::Safe, "UpdateUMInferAPIKey", p)
                .await?;
        }
        // The answer holds only the id: read the key back from the listing.
        let key = self.get(scope, id).await?;
        self.cleared_or_kept(id, &key, &clearing, kept)
    }

    /// A delete answered with a RetCode keysmith cannot be sure of (anything but the documented
    /// codes, [`retcode::KEY_NOT_FOUND`] included: that number is an assumption) is confirmed
    /// against a listing: the key gone is success, the key still listed is
    /// [`ProviderError::Unconfirmed`]. Throttling and server errors stay what they are.
    async fn revoke(&self, scope: &KeyScope, id: &str) -> Result<(), ProviderError> {
        let mut p = Params::new();
        p.insert("KeyId".into(), id.to_string());
        match self
            .call_coded("revoke", Idempotency::Safe, "DeleteUMInferAPIKey", p)
            .await
        {
            Ok(_) => Ok(()),
            // Server-side codes (from 2000) are confirmed too: a key that is gone is gone
            // whatever the code says, and a listing that fails reports its own error.
            Err((e, Some(code)))
                if !retcode_is_documented(code) || code >= retcode::SERVER_ERROR_FLOOR =>
            {
                if matches!(
                    e,
                    ProviderError::RateLimited { .. } | ProviderError::Auth(_)
                ) {
                    return Err(e);
                }
                tracing::debug!(
                    retcode = code,
                    "delete answered with an unconfirmed RetCode; checking the listing"
                );
                super::confirm_revoked(self, scope, id, &e.to_string()).await
            }
            Err((e, _)) => Err(e),
        }
    }

    fn extras_drift(&self, current: &ProviderKey, desired: &KeySettings) -> bool {
        let u = UCloudSettings::from_settings(desired);
        let e = &current.extras;
        let differs = |key: &str, want: &str| e.get(key).is_some_and(|have| have != want);
        differs(
            extra::DAILY_LIMIT,
            u.daily_limit.as_deref().unwrap_or_default(),
        ) || differs(
            extra::MONTHLY_LIMIT,
            u.monthly_limit.as_deref().unwrap_or_default(),
        ) || u
            .sandbox_disabled
            .is_some_and(|sb| differs(extra::SANDBOX_DISABLED, &sb.to_string()))
            || differs(extra::GRANT_ALL_MODELS, &u.grant_all_models.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::signing::tests::{params, DOC_PRIVATE, DOC_PUBLIC};
    use super::wire::tests::{listed, settings};
    use super::*;
    use keysmith_api::UCloudKeySpec;
    use serde_json::json;

    #[test]
    fn client_signs_every_parameter_including_project() {
        let spec = UCloudProvider {
            public_key: DOC_PUBLIC.into(),
            project_id: Some("org-abc123".into()),
            ..Default::default()
        };
        let mut creds = Credentials::default();
        creds
            .0
            .insert("privateKey".into(), SecretString::from(DOC_PRIVATE));
        let c = UCloudClient::new(&spec, creds, ClientOptions::default()).unwrap();
        let signed = c.signed(
            "ListUMInferAPIKey",
            params(&[("Offset", "0"), ("Limit", "20")]),
        );
        assert_eq!(
            signed["Signature"],
            "86ccbbc62fe4c95e465f6dfa1fe17b82d1451fbb"
        );
        let dbg = format!("{c:?}");
        assert!(!dbg.contains(DOC_PRIVATE), "{dbg}");
    }

    #[test]
    fn validate_reports_limits_and_conflicts() {
        let mut s = settings();
        assert!(UCloudClient::problems(&s).is_empty());

        s.limit = Some(Limit {
            amount: "10".into(),
            reset: Some(LimitReset::Weekly),
        });
        let p = UCloudClient::problems(&s);
        assert_eq!(p.len(), 1);
        assert!(
            p[0].contains("spec.limit.reset") && p[0].contains("daily"),
            "{p:?}"
        );

        s.limit = Some(Limit {
            amount: "10".into(),
            reset: None,
        });
        assert!(UCloudClient::problems(&s)[0].contains("no lifetime cap"));

        s.limit = Some(Limit {
            amount: "10".into(),
            reset: Some(LimitReset::Daily),
        });
        s.ucloud = Some(UCloudKeySpec {
            daily_limit_amount: Some("10.00".into()),
            monthly_limit_amount: Some("200".into()),
            ..Default::default()
        });
        assert!(UCloudClient::problems(&s).is_empty());
        s.ucloud.as_mut().unwrap().daily_limit_amount = Some("12".into());
        let p = UCloudClient::problems(&s);
        assert!(
            p[0].contains("spec.ucloud.dailyLimitAmount") && p[0].contains("different"),
            "{p:?}"
        );

        s.ucloud = Some(UCloudKeySpec {
            monthly_limit_amount: Some("lots".into()),
            modelverse_disabled: Some(true),
            ..Default::default()
        });
        let p = UCloudClient::problems(&s);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("monthlyLimitAmount"));
        assert!(p[1].contains("modelverseDisabled") && p[1].contains("spec.disabled"));
        s.disabled = true;
        s.ucloud.as_mut().unwrap().monthly_limit_amount = None;
        assert!(UCloudClient::problems(&s).is_empty());

        s.limit = Some(Limit {
            amount: "0".into(),
            reset: Some(LimitReset::Monthly),
        });
        assert!(UCloudClient::problems(&s)[0].contains("cap of 0"));
    }

    #[test]
    fn validate_reports_ips_and_models() {
        let mut s = settings();
        s.allowed_ips = vec!["10.0.0.0/8".into(), "2001:db8::1".into()];
        s.models = vec!["deepseek-ai/DeepSeek-V3.2-Think".into(), "all".into()];
        let p = UCloudClient::problems(&s);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("2001:db8::1"));
        assert!(p[1].contains("\"all\""));
        s.allowed_ips = (0..101).map(|i| format!("10.0.0.{}", i % 250)).collect();
        s.models.clear();
        assert!(UCloudClient::problems(&s)[0].contains("at most 100"));
    }

    #[test]
    fn drift_covers_caps_models_and_the_block() {
        let spec = UCloudProvider {
            public_key: "pk".into(),
            ..Default::default()
        };
        let mut creds = Credentials::default();
        creds
            .0
            .insert("privateKey".into(), SecretString::from("sk"));
        let c = UCloudClient::new(&spec, creds, ClientOptions::default()).unwrap();
        let k = provider_key(&listed()).unwrap();
        let mut d = settings();
        d.limit = Some(Limit {
            amount: "10".into(),
            reset: Some(LimitReset::Daily),
        });
        d.models = vec!["a/b".into()];
        d.allowed_ips = vec!["10.0.0.0/8".into(), "10.0.0.1".into()];
        d.ucloud = Some(UCloudKeySpec {
            sandbox_disabled: Some(true),
            ..Default::default()
        });
        assert!(drift(&c, &k, &d).is_empty(), "{:?}", drift(&c, &k, &d));
        // A key with an expiry of UCloud's own (no spec field sets one) is no drift: before,
        // it was a permanent NewKeyNeeded (issue 20, item 1).
        let mut expiring = listed();
        expiring["ExpireTime"] = json!(4_102_444_800i64);
        let ek = provider_key(&expiring).unwrap();
        assert!(ek.expires_at.is_some());
        assert!(drift(&c, &ek, &d).is_empty(), "{:?}", drift(&c, &ek, &d));

        let mut d2 = d.clone();
        d2.limit.as_mut().unwrap().amount = "11".into();
        assert_eq!(drift(&c, &k, &d2), vec![Field::Extras]);
        let mut d2 = d.clone();
        d2.ucloud.as_mut().unwrap().monthly_limit_amount = Some("50".into());
        assert_eq!(drift(&c, &k, &d2), vec![Field::Extras]);
        let mut d2 = d.clone();
        d2.ucloud.as_mut().unwrap().sandbox_disabled = Some(false);
        assert_eq!(drift(&c, &k, &d2), vec![Field::Extras]);
        let mut d2 = d.clone();
        d2.models.clear();
        assert_eq!(drift(&c, &k, &d2), vec![Field::Models, Field::Extras]);
        let mut d2 = d.clone();
        d2.disabled = true;
        d2.name = "renamed".into();
        d2.allowed_ips.pop();
        assert_eq!(
            drift(&c, &k, &d2),
            vec![Field::DisplayName, Field::Disabled, Field::AllowedIps]
        );
    }
}
