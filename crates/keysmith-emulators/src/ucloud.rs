//! UCloud ModelVerse ("UMInfer") API-key emulator: UCloud's signed `Action` API on one URL.
//!
//! `GET /?Action=…&…` and `POST /` with a form body (Action may repeat in the query, as the Go SDK
//! sends it) are both served. Every call is checked like UCloud does: `Signature` over all other
//! parameters (sorted, `name value…`, private key appended, SHA-1 hex), the `PublicKey`, then the
//! `ProjectId`. Answers are always HTTP 200 with `RetCode` (0 = success) and `Action:
//! "<Action>Response"`; the error codes are the emulator's own
//! ([`retcode`]): those the reference documents, and its own choice where it is silent.
//!
//! Keys minted here work at `GET /v1/models` with `Authorization: Bearer <Key>` (the OpenAI-style
//! inference API of ModelVerse): 200 for a live key, 403 when ModelverseDisabled or over a cap,
//! 401 otherwise.
//!
//! Control endpoints (not counted, never faulted):
//!
//! | endpoint | what it does |
//! |---|---|
//! | `GET /_emulator/keys` | every key ever minted, deleted ones marked, without the secret |
//! | `POST /_emulator/usage` | `{"keyId": "...", "amount": "1.5"}` adds spend to DailyUsedAmount and MonthlyUsedAmount |
//! | `POST /_emulator/throttle` | `{"count": 2}`: the next 2 API calls answer HTTP 200 with RetCode 1429; no count: until cleared |
//! | `DELETE /_emulator/throttle` | stop throttling |

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Value};

use super::normalise::{Field, Rewrite};
use super::{json_response, FaultArgs, Faults};
// Only the wire vocabulary is shared with the client (RetCode numbers, the parameter map type);
// every check of a request (signature, amounts, whitelist) is the emulator's own.

/// Request parameters by name (the emulator's own type: it shares nothing with the client).
type Params = std::collections::BTreeMap<String, String>;

/// The RetCodes this emulator answers. Documented by UCloud (../shared/providers/ucloud.md):
/// 160/161 (action), 170/171/172 (signature, public key), 220/230/240 (parameters), and
/// "2000 and up is a server error" (its SDKs retry those). Not documented, so the emulator's
/// own choice (each changeable by flag, so a test can answer a code the client has never seen):
/// key not found and throttling.
pub mod retcode {
    pub const MISSING_ACTION: i64 = 160;
    pub const ACTION_NOT_AVAILABLE: i64 = 161;
    pub const MISSING_SIGNATURE: i64 = 170;
    pub const SIGNATURE_ERROR: i64 = 171;
    pub const USER_NOT_EXISTS: i64 = 172;
    pub const MISSING_PARAMS: i64 = 220;
    pub const PARAMS_NOT_AVAILABLE: i64 = 230;
    pub const PARAMS_TOO_LARGE: i64 = 240;
    /// Not documented: the emulator's default for an unknown `KeyId` (`--missing-key-retcode`).
    pub const KEY_NOT_FOUND: i64 = 1404;
    /// Not documented: the emulator's default for throttling (`--throttle-retcode`).
    pub const THROTTLED: i64 = 1429;
    /// From here up: server errors.
    pub const SERVER_ERROR_FLOOR: i64 = 2000;
}

/// Most `IPWhitelist` entries UCloud takes.
const MAX_WHITELIST_ENTRIES: usize = 100;

/// An amount as UCloud renders it: a plain decimal, no exponent, at most 6 decimals, no
/// trailing zeros (`1.5`, `10`).
fn render_amount(v: f64) -> String {
    let s = format!("{:.6}", v.max(0.0));
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() {
        "0".to_string()
    } else {
        s.to_string()
    }
}

/// A decimal parameter (`"75.50"`) in canonical form (`"75.5"`); `None` unless it is digits
/// with at most one point and digits on both sides of it.
fn canonical_amount(v: &str) -> Option<String> {
    let v = v.trim();
    let mut parts = v.splitn(2, '.');
    let int = parts.next().unwrap_or("");
    let frac = parts.next();
    let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    if !digits(int) || frac.is_some_and(|f| !digits(f)) {
        return None;
    }
    let int = match int.trim_start_matches('0') {
        "" => "0",
        i => i,
    };
    match frac
        .map(|f| f.trim_end_matches('0'))
        .filter(|f| !f.is_empty())
    {
        Some(f) => Some(format!("{int}.{f}")),
        None => Some(int.to_string()),
    }
}

/// `IPWhitelist` is newline separated; blank lines are ignored.
fn whitelist_entries(v: &str) -> Vec<String> {
    v.split('\n')
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// An IPv4 address, a range `a-b` with a <= b, or a CIDR block `a/n` (n <= 32, host bits
/// allowed as in UCloud's own example `192.168.1.10/24`).
fn whitelist_entry_ok(e: &str) -> bool {
    use std::net::Ipv4Addr;
    if let Some((a, b)) = e.split_once('-') {
        return matches!(
            (a.trim().parse::<Ipv4Addr>(), b.trim().parse::<Ipv4Addr>()),
            (Ok(a), Ok(b)) if u32::from(a) <= u32::from(b)
        );
    }
    if let Some((addr, bits)) = e.split_once('/') {
        return addr.parse::<Ipv4Addr>().is_ok()
            && bits.bytes().all(|b| b.is_ascii_digit())
            && bits.parse::<u8>().is_ok_and(|n| n <= 32);
    }
    e.parse::<Ipv4Addr>().is_ok()
}

/// Public key accepted when `--public-key` is not given.
pub const DEFAULT_PUBLIC_KEY: &str = "emulator-public-key";
/// Private key used when `--private-key` is not given.
pub const DEFAULT_PRIVATE_KEY: &str = "emulator-private-key";
/// The project that exists when no `--project-id` is given.
pub const DEFAULT_PROJECT: &str = "org-default";

/// Models every key may call when GrantAllModels is on (what `/v1/models` lists).
const CATALOGUE: &[&str] = &[
    "deepseek-ai/DeepSeek-V3.2-Think",
    "deepseek-ai/DeepSeek-R1",
    "Qwen/Qwen3-235B-A22B",
    "moonshotai/Kimi-K2-Instruct",
];

/// Flags of `keysmith emulate ucloud`.
#[derive(clap::Args, Clone)]
pub struct Args {
    /// The account's API public key (requests with another get RetCode 172).
    #[arg(long, default_value = DEFAULT_PUBLIC_KEY)]
    pub public_key: String,
    /// The account's API private key, used to check signatures (RetCode 171 on mismatch).
    #[arg(long, default_value = DEFAULT_PRIVATE_KEY)]
    pub private_key: String,
    /// A project that exists (repeatable); the first is the default project used when a
    /// request leaves ProjectId blank. Default: `org-default`.
    #[arg(long = "project-id")]
    pub project_ids: Vec<String>,
    /// Behave like a sub-account: a blank ProjectId is an error (RetCode 220).
    #[arg(long)]
    pub require_project_id: bool,
    /// ChannelId reported on keys (126: amounts are USD).
    #[arg(long, default_value_t = 126)]
    pub channel_id: i64,
    /// RetCode of a delete (or update) of a key that does not exist. UCloud's reference says
    /// only "non-zero (code unconfirmed)"; keysmith's assumed code is the default.
    #[arg(long, default_value_t = retcode::KEY_NOT_FOUND)]
    pub missing_key_retcode: i64,
    /// RetCode of a throttled call (`POST /_emulator/throttle`). UCloud documents none; a test
    /// can pick a code the client has never seen, which it must still retry on a read.
    #[arg(long, default_value_t = retcode::THROTTLED)]
    pub throttle_retcode: i64,
    /// Message of a throttled call.
    #[arg(long, default_value = "Request too frequent, please try again later")]
    pub throttle_message: String,
    /// An update that sends `DailyLimitAmount`, `MonthlyLimitAmount` or `IPWhitelist` empty
    /// leaves it as it is (as if omitted). UCloud documents no way to remove a cap or the
    /// whitelist (`../shared/providers/ucloud.md`: "omitted = unchanged" is inferred, and
    /// whether an empty value clears is an open question): this is the other reading.
    #[arg(long)]
    pub empty_keeps: bool,
    #[command(flatten)]
    pub faults: FaultArgs,
}

impl std::fmt::Debug for Args {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Args")
            .field("public_key", &self.public_key)
            .field("private_key", &"[REDACTED]")
            .field("project_ids", &self.project_ids)
            .field("require_project_id", &self.require_project_id)
            .field("channel_id", &self.channel_id)
            .field("missing_key_retcode", &self.missing_key_retcode)
            .field("throttle_retcode", &self.throttle_retcode)
            .field("throttle_message", &self.throttle_message)
            .field("empty_keeps", &self.empty_keeps)
            .field("faults", &self.faults)
            .finish()
    }
}

impl Default for Args {
    fn default() -> Self {
        Args {
            public_key: DEFAULT_PUBLIC_KEY.into(),
            private_key: DEFAULT_PRIVATE_KEY.into(),
            project_ids: Vec::new(),
            require_project_id: false,
            channel_id: 126,
            missing_key_retcode: retcode::KEY_NOT_FOUND,
            throttle_retcode: retcode::THROTTLED,
            throttle_message: "Request too frequent, please try again later".into(),
            empty_keeps: false,
            faults: FaultArgs::default(),
        }
    }
}

struct StoredKey {
    id: String,
    project: String,
    name: String,
    secret: String,
    create_time: i64,
    expire_time: i64,
    modelverse_disabled: u8,
    sandbox_disabled: u8,
    /// Normalised decimal, empty: no cap.
    daily_limit: String,
    monthly_limit: String,
    daily_used: f64,
    monthly_used: f64,
    grant_all: bool,
    granted: Vec<String>,
    whitelist: Vec<String>,
    deleted: bool,
}

impl StoredKey {
    fn api_json(&self, emu: &Emulator) -> Value {
        json!({
            "KeyId": self.id,
            "Name": self.name,
            "Key": self.secret,
            // The reference documents only "1 = normal"; a disabled key answers 0 here, the
            // reading least convenient for a client (which must not take it as "gone").
            "Status": if self.modelverse_disabled == 0 { 1 } else { 0 },
            "CreateTime": self.create_time,
            "ExpireTime": self.expire_time,
            "ModelverseDisabled": self.modelverse_disabled,
            "SandBoxDisabled": self.sandbox_disabled,
            "DailyLimitAmount": self.daily_limit,
            "MonthlyLimitAmount": self.monthly_limit,
            "DailyUsedAmount": render_amount(self.daily_used),
            "MonthlyUsedAmount": render_amount(self.monthly_used),
            "GrantAllModels": self.grant_all,
            "GrantedModels": self.granted,
            "IPWhitelist": self.whitelist.join("\n"),
            "ChannelId": emu.channel_id,
            "TopOrganizationId": 100,
            "OrganizationId": emu.organization_id(&self.project),
        })
    }

    /// What `GET /_emulator/keys` shows: everything but the secret.
    fn control_json(&self) -> Value {
        let created = chrono::DateTime::from_timestamp(self.create_time, 0)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default();
        json!({
            "keyId": self.id,
            "name": self.name,
            "projectId": self.project,
            "active": !self.deleted,
            "revoked": self.deleted,
            "createdAt": created,
            "settings": {
                "modelverseDisabled": self.modelverse_disabled,
                "sandboxDisabled": self.sandbox_disabled,
                "dailyLimitAmount": self.daily_limit,
                "monthlyLimitAmount": self.monthly_limit,
                "dailyUsedAmount": render_amount(self.daily_used),
                "monthlyUsedAmount": render_amount(self.monthly_used),
                "grantAllModels": self.grant_all,
                "grantedModels": self.granted,
                "ipWhitelist": self.whitelist,
                "expireTime": self.expire_time,
            },
        })
    }

    fn over_cap(&self) -> bool {
        let over = |cap: &str, used: f64| cap.parse::<f64>().is_ok_and(|c| c > 0.0 && used >= c);
        over(&self.daily_limit, self.daily_used) || over(&self.monthly_limit, self.monthly_used)
    }
}

/// Throttling switch: `Some(n)`: the next n calls; `Some(u64::MAX)`: until cleared.
#[derive(Default)]
struct Store {
    keys: Vec<StoredKey>,
    throttle: Option<u64>,
}

struct Emulator {
    public_key: String,
    private_key: String,
    projects: Vec<String>,
    require_project_id: bool,
    channel_id: i64,
    missing_key_retcode: i64,
    throttle_retcode: i64,
    throttle_message: String,
    empty_keeps: bool,
    store: Mutex<Store>,
}

impl Emulator {
    fn organization_id(&self, project: &str) -> i64 {
        1000 + self.projects.iter().position(|p| p == project).unwrap_or(0) as i64
    }
}

/// An answer in UCloud's envelope (always HTTP 200).
fn answer(action: &str, mut body: Value) -> Response {
    body["Action"] = json!(format!("{action}Response"));
    body["RetCode"] = json!(0);
    json_response(StatusCode::OK, body)
}

/// A business error: HTTP 200 with `RetCode != 0`.
struct Fail {
    code: i64,
    message: String,
}

impl Fail {
    fn new(code: i64, message: impl Into<String>) -> Self {
        Fail {
            code,
            message: message.into(),
        }
    }
    fn missing(name: &str) -> Self {
        Fail::new(retcode::MISSING_PARAMS, format!("Missing params [{name}]"))
    }
    fn not_available(name: &str) -> Self {
        Fail::new(
            retcode::PARAMS_NOT_AVAILABLE,
            format!("Params [{name}] not available"),
        )
    }
    fn not_found(emu: &Emulator, id: &str) -> Self {
        Fail::new(
            emu.missing_key_retcode,
            format!("UMInfer API key [{id}] does not exist"),
        )
    }
    fn respond(self, action: &str) -> Response {
        json_response(
            StatusCode::OK,
            json!({
                "Action": format!("{action}Response"),
                "RetCode": self.code,
                "Message": self.message,
            }),
        )
    }
}

/// How injected faults look: UCloud's envelope with a matching RetCode. A 429 stays HTTP 429
/// (with the framework's Retry-After) so that clients' transport-level throttling handling is
/// exercised; business-level throttling (HTTP 200, RetCode 1429) is `POST /_emulator/throttle`.
fn render_error(status: StatusCode, message: &str) -> Response {
    let code = match status.as_u16() {
        429 => retcode::THROTTLED,
        401 | 403 => retcode::SIGNATURE_ERROR,
        404 => retcode::KEY_NOT_FOUND,
        s if s >= 500 => retcode::SERVER_ERROR_FLOOR,
        _ => retcode::PARAMS_NOT_AVAILABLE,
    };
    json_response(status, json!({ "RetCode": code, "Message": message }))
}

fn random_from(alphabet: &[u8], n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
        .collect()
}

fn new_key_id() -> String {
    format!(
        "uminferapikey-{}",
        random_from(b"abcdefghijklmnopqrstuvwxyz0123456789", 12)
    )
}

fn new_secret() -> String {
    random_from(
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
        48,
    )
}

/// Query string and form body merged (the body wins on a repeated name).
fn collect_params(uri: &Uri, headers: &HeaderMap, body: &Bytes) -> Params {
    let mut p = Params::new();
    if let Some(q) = uri.query() {
        p.extend(url::form_urlencoded::parse(q.as_bytes()).into_owned());
    }
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|ct| ct.starts_with("application/x-www-form-urlencoded"));
    if form && !body.is_empty() {
        p.extend(url::form_urlencoded::parse(body).into_owned());
    }
    p
}

/// A 0/1 switch parameter (absent or, for filters, empty: `None`).
fn switch(p: &Params, name: &str, empty_is_absent: bool) -> Result<Option<u8>, Fail> {
    match p.get(name).map(String::as_str) {
        None => Ok(None),
        Some("") if empty_is_absent => Ok(None),
        Some("0") => Ok(Some(0)),
        Some("1") => Ok(Some(1)),
        Some(_) => Err(Fail::not_available(name)),
    }
}

/// A cap: absent `None`, empty or zero `Some("")` (no cap), else the normalised decimal.
fn amount(p: &Params, name: &str) -> Result<Option<String>, Fail> {
    match p.get(name) {
        None => Ok(None),
        Some(v) if v.trim().is_empty() => Ok(Some(String::new())),
        Some(v) => canonical_amount(v)
            .map(|d| Some(if d == "0" { String::new() } else { d }))
            .ok_or_else(|| Fail::not_available(name)),
    }
}

/// Validated values of the settings parameters shared by create and update.
#[derive(Default)]
struct SettingsParams {
    name: Option<String>,
    modelverse_disabled: Option<u8>,
    sandbox_disabled: Option<u8>,
    daily_limit: Option<String>,
    monthly_limit: Option<String>,
    grant_all: Option<bool>,
    granted: Option<Vec<String>>,
    whitelist: Option<Vec<String>>,
}

fn read_settings(p: &Params) -> Result<SettingsParams, Fail> {
    let mut s = SettingsParams::default();
    if let Some(n) = p.get("Name") {
        if n.trim().is_empty() {
            return Err(Fail::not_available("Name"));
        }
        s.name = Some(n.clone());
    }
    s.modelverse_disabled = switch(p, "ModelverseDisabled", false)?;
    s.sandbox_disabled = switch(p, "SandBoxDisabled", false)?;
    s.daily_limit = amount(p, "DailyLimitAmount")?;
    s.monthly_limit = amount(p, "MonthlyLimitAmount")?;
    if let Some(g) = p.get("GrantAllModels") {
        s.grant_all = Some(match g.to_ascii_lowercase().as_str() {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => return Err(Fail::not_available("GrantAllModels")),
        });
    }
    if let Some(g) = p.get("GrantedModels") {
        let models = if g.trim().is_empty() {
            Vec::new()
        } else {
            serde_json::from_str::<Vec<String>>(g)
                .map_err(|_| Fail::not_available("GrantedModels"))?
        };
        if models.iter().any(|m| m.trim().is_empty()) {
            return Err(Fail::not_available("GrantedModels"));
        }
        s.granted = Some(models);
    }
    if let Some(w) = p.get("IPWhitelist") {
        let entries = whitelist_entries(w);
        if entries.len() > MAX_WHITELIST_ENTRIES {
            return Err(Fail::new(
                retcode::PARAMS_TOO_LARGE,
                "Params [IPWhitelist] too large",
            ));
        }
        if !entries.iter().all(|e| whitelist_entry_ok(e)) {
            return Err(Fail::not_available("IPWhitelist"));
        }
        s.whitelist = Some(entries);
    }
    Ok(s)
}

async fn api(
    State(emu): State<Arc<Emulator>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let p = collect_params(&uri, &headers, &body);
    let Some(action) = p.get("Action").filter(|a| !a.is_empty()).cloned() else {
        return Fail::new(retcode::MISSING_ACTION, "Missing Action").respond("");
    };
    match call(&emu, &action, &p) {
        Ok(body) => answer(&action, body),
        Err(f) => f.respond(&action),
    }
}

/// The emulator's own check of UCloud's request signature (independent of the client's signing
/// code): SHA-1 over `name` `value` of every other parameter in byte order of the names, then
/// the private key; compared as hex, case-insensitively.
fn signature_valid(p: &Params, given: &str, private_key: &str) -> bool {
    use sha1::Digest;
    let mut names: Vec<&String> = p.keys().filter(|n| n.as_str() != "Signature").collect();
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    let mut text = Vec::new();
    for n in names {
        text.extend_from_slice(n.as_bytes());
        text.extend_from_slice(p[n].as_bytes());
    }
    text.extend_from_slice(private_key.as_bytes());
    let digest = sha1::Sha1::digest(&text);
    let expected: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    given.len() == expected.len() && given.to_ascii_lowercase() == expected
}

/// One action, after its name is known: throttling, signature, public key, project, dispatch.
fn call(emu: &Emulator, action: &str, p: &Params) -> Result<Value, Fail> {
    {
        let mut store = emu.store.lock().unwrap();
        if let Some(n) = store.throttle {
            store.throttle = match n {
                u64::MAX => Some(n),
                1 => None,
                n => Some(n - 1),
            };
            return Err(Fail::new(
                emu.throttle_retcode,
                emu.throttle_message.clone(),
            ));
        }
    }
    let Some(sig) = p.get("Signature") else {
        return Err(Fail::new(retcode::MISSING_SIGNATURE, "Missing signature"));
    };
    if p.get("PublicKey") != Some(&emu.public_key) {
        return Err(Fail::new(retcode::USER_NOT_EXISTS, "User Not Exists"));
    }
    if !signature_valid(p, sig, &emu.private_key) {
        return Err(Fail::new(
            retcode::SIGNATURE_ERROR,
            "Signature VerifyAC Error",
        ));
    }
    let project = match p.get("ProjectId").filter(|v| !v.is_empty()) {
        None if emu.require_project_id => return Err(Fail::missing("ProjectId")),
        None => emu.projects[0].as_str(),
        Some(id) if emu.projects.contains(id) => id.as_str(),
        Some(_) => return Err(Fail::not_available("ProjectId")),
    };
    match action {
        "CreateUMInferAPIKey" => create(emu, project, p),
        "ListUMInferAPIKey" => list(emu, project, p),
        "UpdateUMInferAPIKey" => update(emu, project, p),
        "DeleteUMInferAPIKey" => delete(emu, project, p),
        other => Err(Fail::new(
            retcode::ACTION_NOT_AVAILABLE,
            format!("Action [{other}] not available"),
        )),
    }
}

fn create(emu: &Emulator, project: &str, p: &Params) -> Result<Value, Fail> {
    if !p.contains_key("Name") {
        return Err(Fail::missing("Name"));
    }
    let s = read_settings(p)?;
    let key = StoredKey {
        id: new_key_id(),
        project: project.to_string(),
        name: s.name.unwrap_or_default(),
        secret: new_secret(),
        create_time: chrono::Utc::now().timestamp(),
        expire_time: -1,
        modelverse_disabled: s.modelverse_disabled.unwrap_or(0),
        sandbox_disabled: s.sandbox_disabled.unwrap_or(0),
        daily_limit: s.daily_limit.unwrap_or_default(),
        monthly_limit: s.monthly_limit.unwrap_or_default(),
        daily_used: 0.0,
        monthly_used: 0.0,
        grant_all: s.grant_all.unwrap_or(true),
        granted: s.granted.unwrap_or_default(),
        whitelist: s.whitelist.unwrap_or_default(),
        deleted: false,
    };
    let mut store = emu.store.lock().unwrap();
    let data = key.api_json(emu);
    store.keys.push(key);
    let total = store
        .keys
        .iter()
        .filter(|k| !k.deleted && k.project == project)
        .count();
    Ok(json!({ "Data": data, "TotalCount": total }))
}

fn list(emu: &Emulator, project: &str, p: &Params) -> Result<Value, Fail> {
    let int = |name: &str, default: usize| -> Result<usize, Fail> {
        match p.get(name) {
            None => Ok(default),
            Some(v) if v.is_empty() => Ok(default),
            Some(v) => v.parse().map_err(|_| Fail::not_available(name)),
        }
    };
    let offset = int("Offset", 0)?;
    let limit = match int("Limit", 20)? {
        0 => 20,
        l => l.min(100),
    };
    let mv = switch(p, "ModelverseDisabled", true)?;
    let sb = switch(p, "SandBoxDisabled", true)?;
    let store = emu.store.lock().unwrap();
    let data: Vec<Value> = store
        .keys
        .iter()
        .filter(|k| !k.deleted && k.project == project)
        .filter(|k| mv.is_none_or(|v| k.modelverse_disabled == v))
        .filter(|k| sb.is_none_or(|v| k.sandbox_disabled == v))
        .skip(offset)
        .take(limit)
        .map(|k| k.api_json(emu))
        .collect();
    // Like the SDK's response type: no TotalCount for this action. An empty listing is
    // `"Data": {}`, as in the published example.
    if data.is_empty() {
        return Ok(json!({ "Data": {} }));
    }
    Ok(json!({ "Data": data }))
}

fn update(emu: &Emulator, project: &str, p: &Params) -> Result<Value, Fail> {
    let Some(id) = p.get("KeyId").filter(|v| !v.is_empty()) else {
        return Err(Fail::missing("KeyId"));
    };
    let mut s = read_settings(p)?;
    if emu.empty_keeps {
        let empty = |name: &str| p.get(name).is_some_and(|v| v.trim().is_empty());
        if empty("DailyLimitAmount") {
            s.daily_limit = None;
        }
        if empty("MonthlyLimitAmount") {
            s.monthly_limit = None;
        }
        if empty("IPWhitelist") {
            s.whitelist = None;
        }
    }
    let mut store = emu.store.lock().unwrap();
    let k = store
        .keys
        .iter_mut()
        .find(|k| !k.deleted && k.project == project && &k.id == id)
        .ok_or_else(|| Fail::not_found(emu, id))?;
    // Omitted parameters leave the setting as it is.
    if let Some(v) = s.name {
        k.name = v;
    }
    if let Some(v) = s.modelverse_disabled {
        k.modelverse_disabled = v;
    }
    if let Some(v) = s.sandbox_disabled {
        k.sandbox_disabled = v;
    }
    if let Some(v) = s.daily_limit {
        k.daily_limit = v;
    }
    if let Some(v) = s.monthly_limit {
        k.monthly_limit = v;
    }
    if let Some(v) = s.grant_all {
        k.grant_all = v;
    }
    if let Some(v) = s.granted {
        k.granted = v;
    }
    if let Some(v) = s.whitelist {
        k.whitelist = v;
    }
    Ok(json!({ "UminferID": id }))
}

fn delete(emu: &Emulator, project: &str, p: &Params) -> Result<Value, Fail> {
    let Some(id) = p.get("KeyId").filter(|v| !v.is_empty()) else {
        return Err(Fail::missing("KeyId"));
    };
    let mut store = emu.store.lock().unwrap();
    let k = store
        .keys
        .iter_mut()
        .find(|k| !k.deleted && k.project == project && &k.id == id)
        .ok_or_else(|| Fail::not_found(emu, id))?;
    k.deleted = true;
    Ok(json!({ "UminferID": id }))
}

fn openai_error(status: StatusCode, code: &str, message: &str) -> Response {
    json_response(
        status,
        json!({ "error": { "message": message, "type": "invalid_request_error", "code": code } }),
    )
}

/// `GET /v1/models` with the minted key: proves a Secret holds a live key.
async fn models(State(emu): State<Arc<Emulator>>, headers: HeaderMap) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    let store = emu.store.lock().unwrap();
    let now = chrono::Utc::now().timestamp();
    let Some(k) = store.keys.iter().find(|k| {
        !k.deleted
            && !token.is_empty()
            && k.secret == token
            && (k.expire_time < 0 || k.expire_time > now)
    }) else {
        return openai_error(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "Invalid API key",
        );
    };
    if k.modelverse_disabled == 1 {
        return openai_error(
            StatusCode::FORBIDDEN,
            "api_key_disabled",
            "This API key is disabled for ModelVerse",
        );
    }
    if k.over_cap() {
        return openai_error(
            StatusCode::FORBIDDEN,
            "spend_limit_reached",
            "This API key has reached its spend limit",
        );
    }
    let ids: Vec<String> = if k.grant_all {
        CATALOGUE.iter().map(|s| s.to_string()).collect()
    } else {
        k.granted.clone()
    };
    let data: Vec<Value> = ids
        .iter()
        .map(|id| json!({ "id": id, "object": "model", "owned_by": "modelverse" }))
        .collect();
    json_response(StatusCode::OK, json!({ "object": "list", "data": data }))
}

async fn control_keys(State(emu): State<Arc<Emulator>>) -> Json<Value> {
    let store = emu.store.lock().unwrap();
    Json(Value::Array(
        store.keys.iter().map(StoredKey::control_json).collect(),
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageBump {
    key_id: String,
    amount: Value,
}

async fn control_usage(State(emu): State<Arc<Emulator>>, Json(bump): Json<UsageBump>) -> Response {
    let amount = match &bump.amount {
        Value::String(s) => canonical_amount(s).and_then(|d| d.parse::<f64>().ok()),
        Value::Number(n) => n.as_f64().filter(|f| *f >= 0.0),
        _ => None,
    };
    let Some(amount) = amount else {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({ "error": "amount must be a non-negative decimal such as \"1.5\"" }),
        );
    };
    let mut store = emu.store.lock().unwrap();
    let Some(k) = store.keys.iter_mut().find(|k| k.id == bump.key_id) else {
        return json_response(
            StatusCode::NOT_FOUND,
            json!({ "error": format!("no key {}", bump.key_id) }),
        );
    };
    k.daily_used += amount;
    k.monthly_used += amount;
    json_response(
        StatusCode::OK,
        json!({
            "keyId": k.id,
            "dailyUsedAmount": render_amount(k.daily_used),
            "monthlyUsedAmount": render_amount(k.monthly_used),
        }),
    )
}

#[derive(Deserialize, Default)]
struct ThrottleReq {
    #[serde(default)]
    count: Option<u64>,
}

async fn control_throttle(State(emu): State<Arc<Emulator>>, body: Bytes) -> Response {
    let req: ThrottleReq = if body.is_empty() {
        ThrottleReq::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    json!({ "error": format!("body must be {{\"count\": n}}: {e}") }),
                )
            }
        }
    };
    emu.store.lock().unwrap().throttle = match req.count {
        Some(0) => None,
        Some(n) => Some(n),
        None => Some(u64::MAX),
    };
    StatusCode::NO_CONTENT.into_response()
}

async fn control_unthrottle(State(emu): State<Arc<Emulator>>) -> StatusCode {
    emu.store.lock().unwrap().throttle = None;
    StatusCode::NO_CONTENT
}

/// What `--normalise` rewrites in UCloud's answers (`GrantedModels` is an array in answers).
const NORMALISE: &[Field] = &[
    ("IPWhitelist", Rewrite::CidrLines),
    ("GrantedModels", Rewrite::Unordered),
    ("DailyLimitAmount", Rewrite::Decimal),
    ("MonthlyLimitAmount", Rewrite::Decimal),
    ("DailyUsedAmount", Rewrite::Decimal),
    ("MonthlyUsedAmount", Rewrite::Decimal),
];

pub fn build(args: &Args) -> (Router, Arc<Faults>) {
    let mut projects: Vec<String> = args
        .project_ids
        .iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    if projects.is_empty() {
        projects.push(DEFAULT_PROJECT.to_string());
    }
    let emu = Arc::new(Emulator {
        public_key: args.public_key.clone(),
        private_key: args.private_key.clone(),
        projects,
        require_project_id: args.require_project_id,
        channel_id: args.channel_id,
        missing_key_retcode: args.missing_key_retcode,
        throttle_retcode: args.throttle_retcode,
        throttle_message: args.throttle_message.clone(),
        empty_keeps: args.empty_keeps,
        store: Mutex::new(Store::default()),
    });
    // The control endpoints are served as the fallback: the shared fault layer wraps routes
    // only, so they are neither faulted nor counted, like the framework's own.
    let control = Router::new()
        .route("/_emulator/keys", get(control_keys))
        .route("/_emulator/usage", post(control_usage))
        .route(
            "/_emulator/throttle",
            post(control_throttle).delete(control_unthrottle),
        )
        .with_state(emu.clone());
    let router = Router::new()
        .route("/", get(api).post(api))
        .route("/v1/models", get(models))
        .with_state(emu)
        .fallback_service(control);
    let faults = Faults::new(args.faults.clone(), render_error);
    (super::normalised(router, &faults, NORMALISE), faults)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key pair of UCloud's published signature examples (docs/providers/ucloud.md).
    const DOC_PRIVATE: &str = "46f09bb9fab4f12dfc160dae12273d5332b5debe";
    const DOC_PUBLIC: &str = "ucloudsomeone@example.com1296235120854146120";

    fn params(pairs: &[(&str, &str)]) -> Params {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn amounts_and_whitelists_are_checked_here() {
        assert_eq!(canonical_amount("75.50").as_deref(), Some("75.5"));
        assert_eq!(canonical_amount("007").as_deref(), Some("7"));
        assert_eq!(canonical_amount("0.0").as_deref(), Some("0"));
        for bad in ["", "1.", ".5", "-1", "1e3", "1.2.3", "ten"] {
            assert_eq!(canonical_amount(bad), None, "{bad}");
        }
        assert_eq!(render_amount(1.5), "1.5");
        assert_eq!(render_amount(10.0), "10");
        assert_eq!(render_amount(0.0), "0");
        assert_eq!(
            whitelist_entries("10.0.0.1\n\n 10.0.0.0/8 \n"),
            vec!["10.0.0.1", "10.0.0.0/8"]
        );
        for ok in [
            "10.0.0.1",
            "10.0.0.1-10.0.0.9",
            "192.168.1.10/24",
            "0.0.0.0/0",
        ] {
            assert!(whitelist_entry_ok(ok), "{ok}");
        }
        for bad in [
            "10.0.0.9-10.0.0.1",
            "10.0.0.0/33",
            "::1",
            "10.0.0",
            "host",
            "10.0.0.0/x",
        ] {
            assert!(!whitelist_entry_ok(bad), "{bad}");
        }
    }

    #[test]
    fn the_official_example_verifies() {
        let p = params(&[
            ("Action", "CreateUHostInstance"),
            ("Region", "cn-bj2"),
            ("Zone", "cn-bj2-04"),
            ("ImageId", "f43736e1-65a5-4bea-ad2e-8a46e18883c2"),
            ("CPU", "2"),
            ("Memory", "2048"),
            ("DiskSpace", "10"),
            ("LoginMode", "Password"),
            ("Password", "VUNsb3VkLmNu"),
            ("Name", "Host01"),
            ("ChargeType", "Month"),
            ("Quantity", "1"),
            ("PublicKey", DOC_PUBLIC),
        ]);
        let sig = "4f9ef5df2abab2c6fccd1e9515cb7e2df8c6bb65";
        assert!(signature_valid(&p, sig, DOC_PRIVATE));
        assert!(signature_valid(&p, &sig.to_ascii_uppercase(), DOC_PRIVATE));
        assert!(!signature_valid(&p, sig, "another-private-key"));
        let mut changed = p.clone();
        changed.insert("Quantity".into(), "2".into());
        assert!(!signature_valid(&changed, sig, DOC_PRIVATE));
    }

    #[test]
    fn the_second_published_example_verifies() {
        let p = params(&[
            ("Action", "DescribeUHostInstance"),
            ("Region", "cn-bj2"),
            ("Limit", "10"),
            ("PublicKey", "someone@example.com1296235120854146120"),
        ]);
        assert!(signature_valid(
            &p,
            "4201919d267504385deb93af19e0197870fed36b",
            DOC_PRIVATE
        ));
    }

    #[test]
    fn the_signature_parameter_itself_is_not_signed() {
        let mut p = params(&[
            ("Action", "ListUMInferAPIKey"),
            ("ProjectId", "org-abc123"),
            ("Offset", "0"),
            ("Limit", "20"),
            ("PublicKey", DOC_PUBLIC),
        ]);
        let sig = "86ccbbc62fe4c95e465f6dfa1fe17b82d1451fbb";
        p.insert("Signature".into(), sig.into());
        assert!(signature_valid(&p, sig, DOC_PRIVATE));
        assert!(!signature_valid(&p, "", DOC_PRIVATE));
        assert!(!signature_valid(&p, &sig[..39], DOC_PRIVATE));
    }
}
