//! Helpers, the JSON renderings of the stored objects and the parsing of governance objects.

use super::*;

// ---- helpers -------------------------------------------------------------------------------

/// `xxxx************************yyyy` (4 + 24 `*` + 4); 8 characters or fewer: all `*`.
pub fn redact(v: &str) -> String {
    let chars: Vec<char> = v.chars().collect();
    if chars.len() <= 8 {
        return "*".repeat(chars.len());
    }
    let first: String = chars[..4].iter().collect();
    let last: String = chars[chars.len() - 4..].iter().collect();
    format!("{first}{}{last}", "*".repeat(24))
}

/// Whether a value sent back is a redacted placeholder (then the stored value is kept).
pub fn is_redacted(v: &str) -> bool {
    let chars: Vec<char> = v.chars().collect();
    if chars.is_empty() {
        return false;
    }
    if chars.iter().all(|c| *c == '*') {
        return true;
    }
    chars.len() == 32 && chars[4..28].iter().all(|c| *c == '*')
}

/// A Bifrost duration (`30s`, `5m`, `1h`, `1d`, `1w`, `1M`, `1Y`) in seconds.
pub(super) fn duration_secs(w: &str) -> Option<i64> {
    let unit = w.chars().last()?;
    let num: i64 = w[..w.len() - unit.len_utf8()].parse().ok()?;
    if num <= 0 || w.starts_with('+') {
        return None;
    }
    let per = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        'M' => 30 * 86_400,
        'Y' => 365 * 86_400,
        _ => return None,
    };
    num.checked_mul(per)
}

pub(super) fn new_vk_value() -> String {
    format!("sk-bf-{}", uuid::Uuid::new_v4())
}

pub(super) fn strings(v: Option<&Value>, field: &str) -> Result<Vec<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("{field} must be a list of strings"))
            })
            .collect(),
        Some(_) => Err(format!("{field} must be a list of strings")),
    }
}

pub(super) fn opt_str(v: Option<&Value>, field: &str) -> Result<Option<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("{field} must be a string")),
    }
}

/// `expires_at` of a virtual-key request: `None` when absent, `Some(None)` to clear (`""` or
/// null), `Some(Some(t))` for an RFC 3339 moment in the future.
pub(super) fn opt_expiry(v: Option<&Value>) -> Result<Option<Option<DateTime<Utc>>>, String> {
    match v {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(s)) if s.is_empty() => Ok(Some(None)),
        Some(Value::String(s)) => {
            let t = DateTime::parse_from_rfc3339(s)
                .map_err(|_| format!("expires_at must be an RFC3339 timestamp, got {s:?}"))?
                .with_timezone(&Utc);
            if t <= Utc::now() {
                return Err("expires_at must be in the future".into());
            }
            Ok(Some(Some(t)))
        }
        Some(_) => Err("expires_at must be a string".into()),
    }
}

pub(super) fn opt_f64(v: Option<&Value>, field: &str) -> Result<Option<f64>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_f64()
            .map(Some)
            .ok_or_else(|| format!("{field} must be a number")),
    }
}

pub(super) fn opt_i64(v: Option<&Value>, field: &str) -> Result<Option<i64>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_i64()
            .map(Some)
            .ok_or_else(|| format!("{field} must be an integer")),
    }
}

pub(super) fn opt_bool(v: Option<&Value>, field: &str) -> Result<Option<bool>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(format!("{field} must be a boolean")),
    }
}

pub(super) fn parse_body(body: &Bytes) -> Result<Map<String, Value>, String> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err("Invalid request payload: expected a JSON object".into()),
        Err(e) => Err(format!("Invalid JSON: {e}")),
    }
}

pub(super) fn parse_envvar(v: Option<&Value>) -> Result<EnvVar, String> {
    match v {
        None | Some(Value::Null) => Ok(EnvVar {
            value: String::new(),
            env_var: String::new(),
            from_env: false,
        }),
        Some(Value::String(s)) => Ok(match s.strip_prefix("env.") {
            Some(name) => EnvVar {
                value: std::env::var(name).unwrap_or_default(),
                env_var: s.clone(),
                from_env: true,
            },
            None => EnvVar {
                value: s.clone(),
                env_var: String::new(),
                from_env: false,
            },
        }),
        Some(Value::Object(o)) => {
            let from_env = opt_bool(o.get("from_env"), "value.from_env")?.unwrap_or(false);
            let env_var = opt_str(o.get("env_var"), "value.env_var")?.unwrap_or_default();
            let value = opt_str(o.get("value"), "value.value")?.unwrap_or_default();
            if from_env {
                let name = env_var.strip_prefix("env.").unwrap_or(&env_var).to_string();
                Ok(EnvVar {
                    value: std::env::var(name).unwrap_or_default(),
                    env_var,
                    from_env: true,
                })
            } else {
                Ok(EnvVar {
                    value,
                    env_var,
                    from_env: false,
                })
            }
        }
        Some(_) => Err("value must be a string or an object".into()),
    }
}

/// Redact the secret fields of a provider config (at any depth).
pub(super) fn redact_config(v: &Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| {
                    let x = if CONFIG_SECRETS.contains(&k.as_str()) {
                        match x {
                            Value::String(s) => Value::String(redact(s)),
                            Value::Object(inner) => {
                                let mut inner = inner.clone();
                                if let Some(Value::String(s)) = inner.get("value") {
                                    let r = redact(s);
                                    inner.insert("value".into(), Value::String(r));
                                }
                                Value::Object(inner)
                            }
                            other => other.clone(),
                        }
                    } else {
                        redact_config(x)
                    };
                    (k.clone(), x)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(redact_config).collect()),
        other => other.clone(),
    }
}

/// Keep stored secrets where an update echoes their redacted form.
pub(super) fn merge_config(new: &Value, old: Option<&Value>) -> Value {
    let (Value::Object(n), Some(Value::Object(o))) = (new, old) else {
        return new.clone();
    };
    Value::Object(
        n.iter()
            .map(|(k, x)| {
                let kept = if CONFIG_SECRETS.contains(&k.as_str()) {
                    let echoed = match x {
                        Value::String(s) => is_redacted(s),
                        Value::Object(i) => i
                            .get("value")
                            .and_then(Value::as_str)
                            .is_some_and(is_redacted),
                        _ => false,
                    };
                    if echoed {
                        o.get(k).cloned().unwrap_or_else(|| x.clone())
                    } else {
                        x.clone()
                    }
                } else {
                    merge_config(x, o.get(k))
                };
                (k.clone(), kept)
            })
            .collect(),
    )
}

pub(super) fn config_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..8])
}

// ---- JSON renderings -----------------------------------------------------------------------

impl PKey {
    pub(super) fn json(&self) -> Value {
        let mut v = json!({
            "id": self.id,
            "name": self.name,
            "value": self.value.redacted_json(),
            "models": self.models,
            "blacklisted_models": self.blacklisted_models,
            "weight": self.weight,
            "enabled": self.enabled,
            "use_for_batch_api": self.use_for_batch_api,
            "description": self.description,
            "status": self.status,
            "config_hash": config_hash(&[&self.id, &self.name, &self.models.join(","), &self.weight.to_string()]),
        });
        if let Some(a) = &self.aliases {
            v["aliases"] = a.clone();
        }
        for (k, c) in &self.configs {
            v[k] = redact_config(c);
        }
        v
    }

    /// What the gateway's model listing with this key wrote: on a failure, `status:
    /// list_models_failed` and its error text in `description`.
    pub(super) fn list_models(&mut self, fails: bool) {
        if fails {
            self.status = "list_models_failed".into();
            self.description = format!(
                "failed to list models for key {}: upstream {} answered 401 (invalid api key)",
                self.name, self.provider
            );
        } else {
            self.status = "success".into();
        }
    }

    /// A `TableKey` row as a virtual key's provider config lists it (no value).
    pub(super) fn table_row(&self) -> Value {
        json!({
            "key_id": self.id,
            "name": self.name,
            "provider": self.provider,
            "models": self.models,
            "weight": self.weight,
            "enabled": self.enabled,
            "use_for_batch_api": self.use_for_batch_api,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "config_hash": config_hash(&[&self.id, &self.name, &self.models.join(","), &self.weight.to_string()]),
        })
    }

    pub(super) fn flat_row(&self) -> Value {
        json!({
            "key_id": self.id,
            "name": self.name,
            "value": "",
            "models": self.models,
            "weight": self.weight,
            "enabled": self.enabled,
            "provider": self.provider,
            "config_hash": config_hash(&[&self.id, &self.name, &self.models.join(","), &self.weight.to_string()]),
        })
    }
}

impl Budget {
    pub(super) fn json(&self) -> Value {
        json!({
            "id": self.id,
            "max_limit": self.max_limit,
            "reset_duration": self.reset_duration,
            "current_usage": self.current_usage,
            "last_reset": self.last_reset.to_rfc3339_opts(SecondsFormat::Nanos, true),
            "calendar_aligned": false,
            "config_hash": config_hash(&[&self.id, &self.max_limit.to_string(), &self.reset_duration]),
            "created_at": self.created_at.to_rfc3339_opts(SecondsFormat::Nanos, true),
            "updated_at": self.created_at.to_rfc3339_opts(SecondsFormat::Nanos, true),
        })
    }

    /// Reset the counter once its window has passed.
    pub(super) fn refresh(&mut self, at: DateTime<Utc>) {
        if let Some(secs) = duration_secs(&self.reset_duration) {
            if (at - self.last_reset).num_seconds() >= secs {
                self.current_usage = 0.0;
                self.last_reset = at;
            }
        }
    }
}

impl RateLimit {
    /// As Bifrost's `RateLimit` schema has it: the token limit and window are integer and
    /// string when set and left out otherwise (not null); the request ones may be null; the
    /// last-reset times are always times (the creation time before the first reset).
    pub(super) fn json(&self) -> Value {
        let t = |d: &Option<DateTime<Utc>>| {
            d.unwrap_or(self.created_at)
                .to_rfc3339_opts(SecondsFormat::Nanos, true)
        };
        let created = self.created_at.to_rfc3339_opts(SecondsFormat::Nanos, true);
        let mut v = json!({
            "id": self.id,
            "token_current_usage": self.token_current_usage,
            "token_last_reset": t(&self.token_last_reset),
            "request_max_limit": self.request_max_limit,
            "request_reset_duration": self.request_reset_duration,
            "request_current_usage": self.request_current_usage,
            "request_last_reset": t(&self.request_last_reset),
            "config_hash": config_hash(&[
                &self.id,
                &format!("{:?}", self.token_max_limit),
                self.token_reset_duration.as_deref().unwrap_or(""),
                &format!("{:?}", self.request_max_limit),
                self.request_reset_duration.as_deref().unwrap_or(""),
            ]),
            "created_at": created,
            "updated_at": created,
        });
        if let Some(m) = self.token_max_limit {
            v["token_max_limit"] = json!(m);
        }
        if let Some(d) = &self.token_reset_duration {
            v["token_reset_duration"] = json!(d);
        }
        v
    }

    pub(super) fn refresh(&mut self, at: DateTime<Utc>) {
        let due = |w: &Option<String>, last: &Option<DateTime<Utc>>| match (
            w.as_deref().and_then(duration_secs),
            last,
        ) {
            (Some(s), Some(l)) => (at - *l).num_seconds() >= s,
            _ => false,
        };
        if due(&self.token_reset_duration, &self.token_last_reset) {
            self.token_current_usage = 0;
            self.token_last_reset = Some(at);
        }
        if due(&self.request_reset_duration, &self.request_last_reset) {
            self.request_current_usage = 0;
            self.request_last_reset = Some(at);
        }
    }
}

impl Vk {
    /// The `VirtualKey` object. Provider configs name their keys as Bifrost does: `key_ids` is
    /// request-only; answers carry `allow_all_keys` and `keys` (the provider keys' table rows).
    /// `with_expiry: false` answers as a build without virtual-key expiry.
    pub(super) fn json(&self, with_value: bool, with_expiry: bool, pkeys: &[PKey]) -> Value {
        let pcs: Vec<Value> = self
            .provider_configs
            .iter()
            .map(|c| {
                let all = c.key_ids.iter().any(|k| k == "*");
                let keys: Vec<Value> = if all {
                    Vec::new()
                } else {
                    pkeys
                        .iter()
                        .filter(|k| k.provider == c.provider && c.key_ids.contains(&k.id))
                        .map(PKey::table_row)
                        .collect()
                };
                let mut v = json!({
                    "id": c.id,
                    "virtual_key_id": self.id,
                    "provider": c.provider,
                    "weight": c.weight,
                    "allowed_models": c.allowed_models,
                    "blacklisted_models": c.blacklisted_models,
                    "allow_all_keys": all,
                    "keys": keys,
                    "budgets": c.budgets.iter().map(Budget::json).collect::<Vec<_>>(),
                });
                if let Some(rl) = &c.rate_limit {
                    v["rate_limit"] = rl.json();
                }
                v
            })
            .collect();
        let mut v = json!({
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "is_active": self.is_active,
            "provider_configs": pcs,
            "mcp_configs": [],
            "budgets": self.budgets.iter().map(Budget::json).collect::<Vec<_>>(),
            "calendar_aligned": self.calendar_aligned,
            "config_hash": config_hash(&[&self.id, &self.name, &self.description, &self.is_active.to_string()]),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        });
        if let Some(rl) = &self.rate_limit {
            v["rate_limit"] = rl.json();
        }
        // Strings when set, left out otherwise (the schema has no null here).
        if let Some(t) = &self.team_id {
            v["team_id"] = json!(t);
        }
        if let Some(c) = &self.customer_id {
            v["customer_id"] = json!(c);
        }
        if with_value {
            v["value"] = json!(self.value);
        }
        let rfc = |t: &DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
        if with_expiry {
            v["expires_at"] = json!(self.expires_at.as_ref().map(rfc));
        }
        if let Some(r) = &self.rotated_at {
            v["rotated_at"] = json!(rfc(r));
        }
        v
    }

    /// Whether requests with this key are refused for its expiry.
    pub(super) fn expired(&self, at: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|e| e <= at)
    }

    /// A new value (the rotate route, or a rotation the key's manager did not ask for).
    pub(super) fn rotate(&mut self) {
        self.value = new_vk_value();
        let at = Utc::now();
        self.rotated_at = Some(at);
        self.updated_at = now();
    }

    pub(super) fn refresh(&mut self, at: DateTime<Utc>) {
        for b in &mut self.budgets {
            b.refresh(at);
        }
        if let Some(rl) = &mut self.rate_limit {
            rl.refresh(at);
        }
    }

    pub(super) fn hint(&self) -> String {
        let head: String = self.value.chars().take(10).collect();
        format!("{head}…")
    }
}

// ---- parsing of governance objects ---------------------------------------------------------

pub(super) fn parse_budget(v: &Value, field: &str, next_id: &mut u64) -> Result<Budget, String> {
    let o = v
        .as_object()
        .ok_or_else(|| format!("{field} must be an object"))?;
    let max_limit = opt_f64(o.get("max_limit"), &format!("{field}.max_limit"))?
        .ok_or_else(|| format!("{field}.max_limit is required"))?;
    if max_limit < 0.0 {
        return Err(format!("{field}.max_limit must be non-negative"));
    }
    let reset = opt_str(o.get("reset_duration"), &format!("{field}.reset_duration"))?
        .ok_or_else(|| format!("{field}.reset_duration is required"))?;
    if duration_secs(&reset).is_none() {
        return Err(format!(
            "{field}.reset_duration {reset:?} is not a valid duration (e.g. 30s, 5m, 1h, 1d, 1w, 1M, 1Y)"
        ));
    }
    *next_id += 1;
    Ok(Budget {
        id: format!("budget-{}", uuid::Uuid::new_v4()),
        max_limit,
        reset_duration: reset,
        current_usage: 0.0,
        last_reset: Utc::now(),
        created_at: Utc::now(),
    })
}

/// `budgets` (list) or the legacy single `budget`. `None` when neither is present.
pub(super) fn parse_budgets(
    o: &Map<String, Value>,
    field: &str,
    next_id: &mut u64,
) -> Result<Option<Vec<Budget>>, String> {
    let list = match (o.get("budgets"), o.get("budget")) {
        (Some(Value::Array(a)), _) => a
            .iter()
            .enumerate()
            .map(|(i, b)| parse_budget(b, &format!("{field}budgets[{i}]"), next_id))
            .collect::<Result<Vec<_>, _>>()?,
        (Some(Value::Null) | None, Some(Value::Null) | None) => return Ok(None),
        (Some(Value::Null) | None, Some(b)) => {
            vec![parse_budget(b, &format!("{field}budget"), next_id)?]
        }
        (Some(_), _) => return Err(format!("{field}budgets must be a list")),
    };
    let mut seen = BTreeSet::new();
    for b in &list {
        if !seen.insert(b.reset_duration.clone()) {
            return Err(format!(
                "{field}budgets: reset_duration {:?} appears more than once",
                b.reset_duration
            ));
        }
    }
    Ok(Some(list))
}

/// `Some(None)`: remove the rate limit (an object with no field set).
pub(super) fn parse_rate_limit(
    v: Option<&Value>,
    field: &str,
) -> Result<Option<Option<RateLimit>>, String> {
    let o = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(o)) => o,
        Some(_) => return Err(format!("{field} must be an object")),
    };
    let tm = opt_i64(
        o.get("token_max_limit"),
        &format!("{field}.token_max_limit"),
    )?;
    let td = opt_str(
        o.get("token_reset_duration"),
        &format!("{field}.token_reset_duration"),
    )?;
    let rm = opt_i64(
        o.get("request_max_limit"),
        &format!("{field}.request_max_limit"),
    )?;
    let rd = opt_str(
        o.get("request_reset_duration"),
        &format!("{field}.request_reset_duration"),
    )?;
    if tm.is_none() && td.is_none() && rm.is_none() && rd.is_none() {
        return Ok(Some(None));
    }
    for (what, max, dur) in [("token", tm, &td), ("request", rm, &rd)] {
        if max.is_some_and(|m| m < 0) {
            return Err(format!("{field}.{what}_max_limit must be non-negative"));
        }
        if let Some(d) = dur {
            if duration_secs(d).is_none() {
                return Err(format!(
                    "{field}.{what}_reset_duration {d:?} is not a valid duration"
                ));
            }
        }
        if max.is_some() != dur.is_some() {
            return Err(format!(
                "{field}: {what}_max_limit and {what}_reset_duration must be set together"
            ));
        }
    }
    let at = Utc::now();
    Ok(Some(Some(RateLimit {
        id: format!("rl-{}", uuid::Uuid::new_v4()),
        token_max_limit: tm,
        token_last_reset: td.as_ref().map(|_| at),
        token_reset_duration: td,
        request_max_limit: rm,
        request_last_reset: rd.as_ref().map(|_| at),
        request_reset_duration: rd,
        created_at: at,
        ..Default::default()
    })))
}

pub(super) fn parse_provider_configs(
    v: Option<&Value>,
    db: &mut Db,
) -> Result<Option<Vec<ProviderConfig>>, String> {
    let a = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(a)) => a,
        Some(_) => return Err("provider_configs must be a list".into()),
    };
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, c) in a.iter().enumerate() {
        let f = format!("provider_configs[{i}]");
        let o = c
            .as_object()
            .ok_or_else(|| format!("{f} must be an object"))?;
        let provider = opt_str(o.get("provider"), &format!("{f}.provider"))?
            .filter(|p| !p.is_empty())
            .ok_or_else(|| format!("{f}.provider is required"))?;
        if !seen.insert(provider.clone()) {
            return Err(format!(
                "provider {provider:?} appears more than once in provider_configs"
            ));
        }
        let weight = opt_f64(o.get("weight"), &format!("{f}.weight"))?.unwrap_or(1.0);
        if weight < 0.0 {
            return Err(format!("{f}.weight must be non-negative"));
        }
        let key_ids = strings(o.get("key_ids"), &format!("{f}.key_ids"))?;
        for k in &key_ids {
            if k != "*"
                && !db
                    .pkeys
                    .iter()
                    .any(|p| &p.id == k && p.provider == provider)
            {
                return Err(format!(
                    "{f}.key_ids: key {k:?} is not a key of provider {provider}"
                ));
            }
        }
        let budgets = parse_budgets(o, &format!("{f}."), &mut db.next_id)?.unwrap_or_default();
        let rate_limit =
            parse_rate_limit(o.get("rate_limit"), &format!("{f}.rate_limit"))?.flatten();
        db.next_id += 1;
        out.push(ProviderConfig {
            id: db.next_id,
            provider,
            weight,
            allowed_models: strings(o.get("allowed_models"), &format!("{f}.allowed_models"))?,
            blacklisted_models: strings(
                o.get("blacklisted_models"),
                &format!("{f}.blacklisted_models"),
            )?,
            key_ids,
            budgets,
            rate_limit,
        });
    }
    Ok(Some(out))
}

/// Carry usage counters over to replacement budgets with the same window.
pub(super) fn keep_usage(new: &mut [Budget], old: &[Budget]) {
    for b in new {
        if let Some(o) = old.iter().find(|o| o.reset_duration == b.reset_duration) {
            b.current_usage = o.current_usage;
            b.last_reset = o.last_reset;
            b.id = o.id.clone();
        }
    }
}
