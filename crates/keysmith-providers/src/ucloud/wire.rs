//! What keysmith sends and reads at UCloud: an ApiKey's settings as action parameters, and a
//! listed `APIKey` object as a [`ProviderKey`].

use std::net::Ipv4Addr;

use chrono::TimeZone;
use serde_json::Value;

use super::signing::{encode_bool, Params};
use crate::*;

/// Whether `entry` is what `IPWhitelist` takes: an IPv4 address, an IPv4 range `a-b` (a <= b)
/// or an IPv4 CIDR block (host bits allowed, as in UCloud's own example `192.168.1.10/24`).
pub fn valid_whitelist_entry(entry: &str) -> bool {
    let e = entry.trim();
    if e.is_empty() || e != entry {
        return false;
    }
    if let Some((a, b)) = e.split_once('-') {
        return match (a.trim().parse::<Ipv4Addr>(), b.trim().parse::<Ipv4Addr>()) {
            (Ok(a), Ok(b)) => a <= b,
            _ => false,
        };
    }
    if e.contains('/') {
        return e.parse::<ipnet::Ipv4Net>().is_ok();
    }
    e.parse::<Ipv4Addr>().is_ok()
}

/// Split `IPWhitelist` (newline separated) into entries.
pub fn split_whitelist(s: &str) -> Vec<String> {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// The settings of a key in UCloud's terms, derived from an ApiKey's settings.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct UCloudSettings {
    pub(super) name: String,
    pub(super) modelverse_disabled: bool,
    pub(super) sandbox_disabled: Option<bool>,
    /// Normalised decimal; `None`: no cap.
    pub(super) daily_limit: Option<String>,
    pub(super) monthly_limit: Option<String>,
    pub(super) grant_all_models: bool,
    pub(super) granted_models: Vec<String>,
    pub(super) ip_whitelist: Vec<String>,
}

impl UCloudSettings {
    /// Assumes [`UCloudClient::validate`] found nothing (bad values are dropped here).
    pub(super) fn from_settings(s: &KeySettings) -> Self {
        let block = s.ucloud.clone().unwrap_or_default();
        let neutral = |reset: LimitReset| {
            s.limit
                .as_ref()
                .filter(|l| l.reset == Some(reset))
                .map(|l| l.amount.clone())
        };
        let block_amount = |v: &Option<String>| v.as_deref().and_then(normalize_decimal);
        UCloudSettings {
            name: s.name.clone(),
            modelverse_disabled: s.disabled || block.modelverse_disabled == Some(true),
            sandbox_disabled: block.sandbox_disabled,
            daily_limit: neutral(LimitReset::Daily)
                .or_else(|| block_amount(&block.daily_limit_amount)),
            monthly_limit: neutral(LimitReset::Monthly)
                .or_else(|| block_amount(&block.monthly_limit_amount)),
            grant_all_models: s.models.is_empty(),
            granted_models: s.models.clone(),
            ip_whitelist: s.allowed_ips.clone(),
        }
    }

    pub(super) fn put_name(&self, p: &mut Params) {
        p.insert("Name".into(), self.name.clone());
    }
    pub(super) fn put_disabled(&self, p: &mut Params) {
        p.insert(
            "ModelverseDisabled".into(),
            flag(self.modelverse_disabled).into(),
        );
    }
    pub(super) fn put_sandbox(&self, p: &mut Params) {
        if let Some(sb) = self.sandbox_disabled {
            p.insert("SandBoxDisabled".into(), flag(sb).into());
        }
    }
    /// An empty value removes a cap (keysmith's assumption, see the docs).
    pub(super) fn put_limits(&self, p: &mut Params, clear: bool) {
        for (name, v) in [
            ("DailyLimitAmount", &self.daily_limit),
            ("MonthlyLimitAmount", &self.monthly_limit),
        ] {
            match v {
                Some(a) => {
                    p.insert(name.into(), a.clone());
                }
                None if clear => {
                    p.insert(name.into(), String::new());
                }
                None => {}
            }
        }
    }
    pub(super) fn put_models(&self, p: &mut Params) {
        p.insert("GrantAllModels".into(), encode_bool(self.grant_all_models));
        if !self.grant_all_models {
            p.insert(
                "GrantedModels".into(),
                serde_json::to_string(&self.granted_models).expect("strings serialise"),
            );
        }
    }
    pub(super) fn put_whitelist(&self, p: &mut Params, clear: bool) {
        if !self.ip_whitelist.is_empty() || clear {
            p.insert("IPWhitelist".into(), self.ip_whitelist.join("\n"));
        }
    }
}

pub(super) fn flag(b: bool) -> &'static str {
    if b {
        "1"
    } else {
        "0"
    }
}

/// Keys of [`ProviderKey::extras`] this client fills (what the listing reports of the settings
/// that have no neutral field, or whose neutral form is ambiguous).
pub(super) mod extra {
    pub const DAILY_LIMIT: &str = "dailyLimitAmount";
    pub const MONTHLY_LIMIT: &str = "monthlyLimitAmount";
    pub const SANDBOX_DISABLED: &str = "sandboxDisabled";
    pub const GRANT_ALL_MODELS: &str = "grantAllModels";
    pub const STATUS: &str = "status";
    pub const CHANNEL_ID: &str = "channelId";
}

/// A JSON value as a string, whether UCloud sent a string or a number.
pub(super) fn json_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

pub(super) fn json_int(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        Value::Bool(b) => Some(i64::from(*b)),
        _ => None,
    }
}

pub(super) fn json_bool(v: Option<&Value>) -> Option<bool> {
    match v? {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => n.as_i64().map(|i| i != 0),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => Some(true),
            "false" | "0" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// A cap as reported: `None` for no cap. An empty string and zero both read as "no cap"
/// (keysmith's assumption; a cap of 0 is refused by `validate()` for that reason).
pub(super) fn cap(v: Option<&Value>) -> Option<String> {
    let s = json_text(v)?;
    let d = normalize_decimal(&s)?;
    (d != "0").then_some(d)
}

/// `GrantedModels`: an array of strings (current API), or the older comma-separated string
/// (`all` meaning every model), or JSON-array text.
pub(super) fn granted_models(v: Option<&Value>) -> (Vec<String>, bool) {
    let clean = |items: Vec<String>| -> Vec<String> {
        items
            .into_iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let items = match v {
        Some(Value::Array(a)) => clean(
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect(),
        ),
        Some(Value::String(s)) => {
            let t = s.trim();
            if t.starts_with('[') {
                clean(serde_json::from_str::<Vec<String>>(t).unwrap_or_default())
            } else {
                clean(t.split(',').map(str::to_string).collect())
            }
        }
        _ => Vec::new(),
    };
    let all = items.iter().any(|m| m.eq_ignore_ascii_case("all"));
    (items, all)
}

pub(super) fn unix_time(secs: Option<i64>) -> Option<DateTime<Utc>> {
    match secs? {
        s if s > 0 => Utc.timestamp_opt(s, 0).single(),
        _ => None,
    }
}

/// A masked form of the key for status: first and last four characters.
pub(super) fn hint(secret: &str) -> Option<String> {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() < 16 {
        return None;
    }
    let head: String = chars[..4].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    Some(format!("{head}…{tail}"))
}

pub(super) fn sub(a: &str, b: Option<&str>) -> Option<f64> {
    let a: f64 = a.parse().ok()?;
    let b: f64 = b.unwrap_or("0").parse().ok()?;
    Some((a - b).max(0.0))
}

/// A listed (or created) `APIKey` object as a [`ProviderKey`]. The secret goes straight into a
/// `SecretString`; nothing here formats the JSON object.
pub(super) fn provider_key(v: &Value) -> Result<ProviderKey, ProviderError> {
    let id = v
        .get("KeyId")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ProviderError::Malformed("an APIKey object has no KeyId".into()))?
        .to_string();
    let name = json_text(v.get("Name")).unwrap_or_default();
    let secret = v
        .get("Key")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    let status = json_int(v.get("Status"));
    let expire = json_int(v.get("ExpireTime"));
    let expires_at = unix_time(expire);
    let expired = expires_at.is_some_and(|t| t <= Utc::now());
    let modelverse_disabled = json_int(v.get("ModelverseDisabled")).map(|d| d != 0);
    let sandbox_disabled = json_int(v.get("SandBoxDisabled")).map(|d| d != 0);
    let daily_limit = cap(v.get("DailyLimitAmount"));
    let monthly_limit = cap(v.get("MonthlyLimitAmount"));
    let daily_used = json_text(v.get("DailyUsedAmount")).and_then(|s| normalize_decimal(&s));
    let monthly_used = json_text(v.get("MonthlyUsedAmount")).and_then(|s| normalize_decimal(&s));
    let (granted, legacy_all) = granted_models(v.get("GrantedModels"));
    let grant_all = json_bool(v.get("GrantAllModels")).unwrap_or(legacy_all) || legacy_all;
    let whitelist = json_text(v.get("IPWhitelist")).map(|s| split_whitelist(&s));
    let channel = json_int(v.get("ChannelId"));

    // Limit minus spend: the tighter of the daily and monthly headroom.
    let remaining = [
        daily_limit
            .as_deref()
            .and_then(|l| sub(l, daily_used.as_deref())),
        monthly_limit
            .as_deref()
            .and_then(|l| sub(l, monthly_used.as_deref())),
    ]
    .into_iter()
    .flatten()
    .reduce(f64::min);
    let usage =
        (daily_used.is_some() || monthly_used.is_some() || remaining.is_some()).then(|| {
            Usage {
                total: None,
                daily: daily_used.clone(),
                weekly: None,
                monthly: monthly_used.clone(),
                limit_remaining: remaining.map(decimal_from_f64),
                // UCloud: "the unit depends on the user's channel; for channel 126 it is USD".
                unit: (channel == Some(126)).then(|| "USD".to_string()),
                byok: None,
                resets_at: None,
            }
        });

    let mut extras = Extras::new();
    extras.insert(
        extra::DAILY_LIMIT.to_string(),
        daily_limit.clone().unwrap_or_default(),
    );
    extras.insert(
        extra::MONTHLY_LIMIT.to_string(),
        monthly_limit.clone().unwrap_or_default(),
    );
    if let Some(sb) = sandbox_disabled {
        extras.insert(extra::SANDBOX_DISABLED.to_string(), sb.to_string());
    }
    extras.insert(extra::GRANT_ALL_MODELS.to_string(), grant_all.to_string());
    if let Some(s) = status {
        extras.insert(extra::STATUS.to_string(), s.to_string());
    }
    if let Some(c) = channel {
        extras.insert(extra::CHANNEL_ID.to_string(), c.to_string());
    }

    Ok(ProviderKey {
        // Reported for the status (and expiry alerts), never compared: the spec cannot set a
        // UCloud key's expiry (ExpireTime is read-only; -1: never), so a provider-side default
        // expiry compared with "none" would be permanent drift on a field no update can change
        // (NewKeyNeeded forever, or a new key every reconcile with onImmutableChange: Replace).
        expires_at,
        id,
        name,
        hint: secret.and_then(hint),
        created_at: unix_time(json_int(v.get("CreateTime"))),
        // UCloud reports no last use.
        last_used_at: None,
        usage,
        // A deleted key is not listed, so a listed key exists. `Status` is documented only as
        // "1 = normal"; a disabled key may report another value, and reading that as "gone"
        // would make `disabled: true` recreate the key. So Status does not decide liveness (it
        // is kept in the extras for the status); an expired key is no longer live.
        active: !expired,
        observed: ObservedSettings {
            disabled: modelverse_disabled,
            // Not compared (see `expires_at` above).
            expires_at: None,
            // Daily and monthly caps do not fit one neutral limit unambiguously (the neutral
            // limit and the ucloud block both feed them): they are compared in extras_drift.
            limit: None,
            allowed_ips: whitelist,
            models: Some(if grant_all { Vec::new() } else { granted }),
        },
        // No free-text field at UCloud: crash recovery goes by name and creation time.
        attempt: None,
        secret: secret.map(|s| SecretString::from(s.to_string())),
        extras,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ucloud::signing::tests::params;
    use keysmith_api::UCloudKeySpec;
    use secrecy::ExposeSecret;
    use serde_json::json;

    #[test]
    fn whitelist_entries() {
        for ok in [
            "10.0.0.1",
            "192.168.1.10-192.168.1.100",
            "192.168.1.10/24",
            "0.0.0.0/0",
        ] {
            assert!(valid_whitelist_entry(ok), "{ok}");
        }
        for bad in [
            "",
            " 10.0.0.1",
            "10.0.0.300",
            "10.0.0.9-10.0.0.1",
            "10.0.0.0/33",
            "::1",
            "2001:db8::/32",
            "example.com",
            "10.0.0.1\n10.0.0.2",
        ] {
            assert!(!valid_whitelist_entry(bad), "{bad:?}");
        }
        assert_eq!(
            split_whitelist("10.0.0.1\r\n\n 10.0.0.0/8 \n"),
            vec!["10.0.0.1", "10.0.0.0/8"]
        );
    }

    pub(crate) fn settings() -> KeySettings {
        KeySettings {
            name: "team-a/chat".into(),
            ..Default::default()
        }
    }

    #[test]
    fn settings_become_parameters() {
        let mut s = settings();
        s.disabled = true;
        s.limit = Some(Limit {
            amount: "7.5".into(),
            reset: Some(LimitReset::Monthly),
        });
        s.ucloud = Some(UCloudKeySpec {
            daily_limit_amount: Some("1.50".into()),
            sandbox_disabled: Some(true),
            ..Default::default()
        });
        s.models = vec!["a/b".into(), "c".into()];
        s.allowed_ips = vec!["10.0.0.1".into(), "10.0.1.0/24".into()];
        let u = UCloudSettings::from_settings(&s);
        let mut p = Params::new();
        u.put_name(&mut p);
        u.put_disabled(&mut p);
        u.put_sandbox(&mut p);
        u.put_limits(&mut p, false);
        u.put_models(&mut p);
        u.put_whitelist(&mut p, false);
        assert_eq!(
            p,
            params(&[
                ("Name", "team-a/chat"),
                ("ModelverseDisabled", "1"),
                ("SandBoxDisabled", "1"),
                ("DailyLimitAmount", "1.5"),
                ("MonthlyLimitAmount", "7.5"),
                ("GrantAllModels", "false"),
                ("GrantedModels", r#"["a/b","c"]"#),
                ("IPWhitelist", "10.0.0.1\n10.0.1.0/24"),
            ])
        );

        // Clearing (update): empty values remove caps and the whitelist; no models = all.
        let u = UCloudSettings::from_settings(&settings());
        let mut p = Params::new();
        u.put_limits(&mut p, true);
        u.put_models(&mut p);
        u.put_whitelist(&mut p, true);
        assert_eq!(
            p,
            params(&[
                ("DailyLimitAmount", ""),
                ("MonthlyLimitAmount", ""),
                ("GrantAllModels", "true"),
                ("IPWhitelist", ""),
            ])
        );
    }

    pub(crate) fn listed() -> Value {
        json!({
            "KeyId": "uminferapikey-abcdef123456",
            "Name": "team-a/chat",
            "Key": "SECRETSECRETSECRETSECRET0123456789",
            "Status": 1,
            "CreateTime": 1_760_000_000,
            "ExpireTime": -1,
            "ModelverseDisabled": 0,
            "SandBoxDisabled": 1,
            "DailyLimitAmount": "10",
            "MonthlyLimitAmount": "0",
            "DailyUsedAmount": "2.5",
            "MonthlyUsedAmount": "40.25",
            "GrantAllModels": false,
            "GrantedModels": ["a/b"],
            "IPWhitelist": "10.0.0.1\n10.0.0.0/8",
            "ChannelId": 126,
            "TopOrganizationId": 1,
            "OrganizationId": 2
        })
    }

    #[test]
    fn a_listed_key_is_observed() {
        let k = provider_key(&listed()).unwrap();
        assert_eq!(k.id, "uminferapikey-abcdef123456");
        assert_eq!(k.name, "team-a/chat");
        assert_eq!(k.hint.as_deref(), Some("SECR…6789"));
        assert_eq!(k.created_at.unwrap().timestamp(), 1_760_000_000);
        assert!(k.active);
        assert_eq!(
            k.secret.as_ref().unwrap().expose_secret(),
            "SECRETSECRETSECRETSECRET0123456789"
        );
        assert_eq!(k.observed.disabled, Some(false));
        assert_eq!(k.observed.expires_at, None);
        assert_eq!(k.expires_at, None, "-1: never");
        assert_eq!(k.observed.limit, None);
        assert_eq!(
            k.observed.allowed_ips,
            Some(vec!["10.0.0.1".to_string(), "10.0.0.0/8".to_string()])
        );
        assert_eq!(k.observed.models, Some(vec!["a/b".to_string()]));
        let u = k.usage.clone().unwrap();
        assert_eq!(u.daily.as_deref(), Some("2.5"));
        assert_eq!(u.monthly.as_deref(), Some("40.25"));
        assert_eq!(u.limit_remaining.as_deref(), Some("7.5"));
        assert_eq!(u.unit.as_deref(), Some("USD"));
        assert_eq!(k.extras.get("dailyLimitAmount").unwrap(), "10");
        assert_eq!(k.extras.get("monthlyLimitAmount").unwrap(), "");
        // Never the secret in Debug output.
        assert!(!format!("{k:?}").contains("SECRETSECRET"));
    }

    #[test]
    fn older_and_odd_shapes_are_read() {
        let mut v = listed();
        v["GrantedModels"] = json!("all");
        v["GrantAllModels"] = Value::Null;
        v["ExpireTime"] = json!(4_102_444_800i64);
        v["DailyUsedAmount"] = json!(1.5);
        v["Status"] = json!(2);
        v["ChannelId"] = json!(1);
        let k = provider_key(&v).unwrap();
        assert_eq!(k.observed.models, Some(vec![]));
        assert_eq!(
            k.expires_at,
            Some(Utc.timestamp_opt(4_102_444_800, 0).unwrap())
        );
        // Reported, never compared (issue 20, item 1): no spec field sets it.
        assert_eq!(k.observed.expires_at, None);
        assert_eq!(k.usage.as_ref().unwrap().daily.as_deref(), Some("1.5"));
        assert_eq!(k.usage.as_ref().unwrap().unit, None);
        // A Status other than 1 (e.g. a disabled key) is not "gone": the key is still listed.
        assert!(k.active);
        assert_eq!(k.extras.get(extra::STATUS).map(String::as_str), Some("2"));
        // An expired key is no longer live.
        let mut expired = v.clone();
        expired["ExpireTime"] = json!(1_000_000_000i64);
        assert!(!provider_key(&expired).unwrap().active);
        v["GrantedModels"] = json!("a/b, c/d");
        v["GrantAllModels"] = json!(0);
        assert_eq!(
            provider_key(&v).unwrap().observed.models,
            Some(vec!["a/b".to_string(), "c/d".to_string()])
        );
        v["ExpireTime"] = json!(1);
        v["Status"] = json!(1);
        assert!(!provider_key(&v).unwrap().active, "expired");
        assert!(matches!(
            provider_key(&json!({"Name": "x"})),
            Err(ProviderError::Malformed(_))
        ));
    }
}
