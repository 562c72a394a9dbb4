//! `rotate` and `revoke-now`: the `keysmith.dev/rotate` annotation (docs/rotation.md), and a
//! follower that reads the ApiKey's status until the rotation is through.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde::Serialize;
use serde_json::{json, Value};

use keysmith::api::{ApiKey, ROTATE_ANNOTATION};

use super::gather::{self, Scope};
use super::render::{self, human, Style};
use super::{Output, PluginError};

const POLL: Duration = Duration::from_millis(500);

/// Where a rotation is.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub enum Stage {
    Requested,
    /// keysmith recorded the request but did not rotate (a pushed key).
    Ignored,
    NewKeyWritten,
    RolledOut,
    OldKeyRevoked,
}

impl Stage {
    fn text(self) -> &'static str {
        match self {
            Stage::Requested => "requested",
            Stage::Ignored => {
                "ignored by keysmith (a pushed key rotates when its source Secret changes)"
            }
            Stage::NewKeyWritten => "new key written",
            Stage::RolledOut => "restarts rolled out",
            Stage::OldKeyRevoked => "old key revoked",
        }
    }
}

#[derive(Serialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub namespace: String,
    pub name: String,
    pub request: String,
    pub old_key_id: Option<String>,
    pub new_key_id: Option<String>,
    pub stage: Stage,
    /// Seconds from the request to each stage reached.
    pub timings: Vec<(Stage, f64)>,
    /// When the old key is revoked, if that is after the wait.
    pub old_key_live_until: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub restarted: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grace_period: Option<String>,
}

/// A fresh rotate request value (each new value rotates once).
fn request_value() -> String {
    let now = chrono::Utc::now();
    format!("kubectl-keysmith-{}", now.format("%Y%m%dT%H%M%S%.3fZ"))
}

async fn request(
    client: &Client,
    ak: &ApiKey,
    value: &str,
    grace: Option<&str>,
) -> Result<(), PluginError> {
    let ns = ak.namespace().unwrap_or_default();
    let api: Api<ApiKey> = Api::namespaced(client.clone(), &ns);
    let mut patch = json!({"metadata": {"annotations": {ROTATE_ANNOTATION: value}}});
    if let Some(g) = grace {
        patch["spec"] = json!({"rotation": {"gracePeriod": g}});
    }
    api.patch(
        &ak.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(|e| match e {
        kube::Error::Api(ae) if ae.code == 422 => PluginError::Usage(format!(
            "apikey {ns}/{}: the API server refused the change: {}",
            ak.name_any(),
            gather::bounded(&ae.message)
        )),
        e => gather::api_err("patch", "apikeys.keysmith.dev", Some(&ns), e),
    })?;
    Ok(())
}

fn stage_of(ak: &ApiKey, p: &Progress, before: &BeforeRotation) -> Stage {
    let st = ak.status.clone().unwrap_or_default();
    let rot = st.rotation.clone().unwrap_or_default();
    if rot.handled_request.as_deref() != Some(p.request.as_str()) || rot.in_progress.is_some() {
        return Stage::Requested;
    }
    let new_value = st.key_id != before.key_id || st.last_rotated_at != before.last_rotated_at;
    if !new_value {
        return Stage::Ignored;
    }
    if rot.rollout.is_some() {
        return Stage::NewKeyWritten;
    }
    let old_pending = before.key_id.as_ref().is_some_and(|old| {
        Some(old) != st.key_id.as_ref() && st.previous_keys.iter().any(|k| &k.key_id == old)
    });
    if old_pending {
        return Stage::RolledOut;
    }
    Stage::OldKeyRevoked
}

struct BeforeRotation {
    key_id: Option<String>,
    last_rotated_at: Option<String>,
}

/// Follow each rotation until `goal` (or Ignored), a deadline beyond the timeout, or timeout.
async fn follow(
    client: &Client,
    items: &mut [(Progress, BeforeRotation)],
    goal: Stage,
    timeout: Duration,
    started: Instant,
    style: &Style,
    print: bool,
) -> bool {
    // A timeout too long to represent is "no timeout" in practice, never a panic.
    let deadline = started
        .checked_add(timeout)
        .unwrap_or(started + Duration::from_secs(100 * 365 * 86400));
    loop {
        let mut all_done = true;
        for (p, before) in items.iter_mut() {
            if p.stage >= goal || p.stage == Stage::Ignored || p.old_key_live_until.is_some() {
                continue;
            }
            let api: Api<ApiKey> = Api::namespaced(client.clone(), &p.namespace);
            let ak = match api.get(&p.name).await {
                Ok(ak) => ak,
                Err(e) => {
                    if print {
                        eprintln!(
                            "{} {}/{}: {e}",
                            style.yellow("warning:"),
                            p.namespace,
                            p.name
                        );
                    }
                    all_done = false;
                    continue;
                }
            };
            let s = stage_of(&ak, p, before);
            let st = ak.status.clone().unwrap_or_default();
            if s != p.stage {
                let t = started.elapsed().as_secs_f64();
                // Stages can be passed between two polls: record each one reached.
                for x in [Stage::NewKeyWritten, Stage::RolledOut, Stage::OldKeyRevoked] {
                    if x > p.stage && x <= s && s != Stage::Ignored {
                        p.timings.push((x, t));
                        if print {
                            println!(
                                "{}/{}: {} {}",
                                p.namespace,
                                p.name,
                                style.green(x.text()),
                                style.bold(&format!("(+{})", human(Duration::from_secs_f64(t))))
                            );
                        }
                    }
                }
                if s == Stage::Ignored && print {
                    println!("{}/{}: {}", p.namespace, p.name, style.yellow(s.text()));
                }
                p.stage = s;
                p.new_key_id = st.key_id.clone();
                if s >= Stage::NewKeyWritten && p.restarted.is_empty() {
                    p.restarted = ak
                        .spec
                        .rollout_restart_targets
                        .iter()
                        .map(|t| format!("{}/{}", t.kind, t.name))
                        .collect();
                }
            }
            if p.stage == Stage::RolledOut {
                // Do not wait past the timeout for a grace period that ends after it.
                let old = before.key_id.clone().unwrap_or_default();
                if let Some(pk) = st.previous_keys.iter().find(|k| k.key_id == old) {
                    let ends = gather::parse_time(&pk.delete_after);
                    let wait_end = chrono::Duration::from_std(
                        deadline.saturating_duration_since(Instant::now()),
                    )
                    .ok()
                    .and_then(|d| chrono::Utc::now().checked_add_signed(d))
                    .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
                    if ends.is_some_and(|t| t > wait_end) {
                        p.old_key_live_until = Some(pk.delete_after.clone());
                        if print {
                            println!(
                                "{}/{}: old key {} stays live until {} (its grace period); not waiting for that",
                                p.namespace, p.name, old, pk.delete_after
                            );
                        }
                        continue;
                    }
                }
            }
            if p.stage < goal && p.stage != Stage::Ignored {
                all_done = false;
            }
        }
        if all_done {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

fn start(ak: &ApiKey, value: &str) -> (Progress, BeforeRotation) {
    let st = ak.status.clone().unwrap_or_default();
    (
        Progress {
            namespace: ak.namespace().unwrap_or_default(),
            name: ak.name_any(),
            request: value.to_string(),
            old_key_id: st.key_id.clone(),
            new_key_id: None,
            stage: Stage::Requested,
            timings: Vec::new(),
            old_key_live_until: None,
            restarted: Vec::new(),
            grace_period: ak
                .spec
                .rotation
                .as_ref()
                .and_then(|r| r.grace_period.clone()),
        },
        BeforeRotation {
            key_id: st.key_id,
            last_rotated_at: st.last_rotated_at,
        },
    )
}

pub async fn rotate(
    client: &Client,
    keys: Vec<ApiKey>,
    grace: Option<String>,
    wait: bool,
    timeout: Duration,
    out: Output,
    style: &Style,
) -> Result<i32, PluginError> {
    let value = request_value();
    let started = Instant::now();
    let table = out == Output::Table;
    let mut items = Vec::new();
    for ak in &keys {
        request(client, ak, &value, grace.as_deref()).await?;
        let (mut p, b) = start(ak, &value);
        if grace.is_some() {
            p.grace_period = grace.clone();
        }
        if table {
            let mut line = format!(
                "apikey {}/{} annotated {ROTATE_ANNOTATION}={value}",
                p.namespace, p.name
            );
            if let Some(g) = &grace {
                let _ = write!(line, ", spec.rotation.gracePeriod={g}");
            }
            println!("{line}");
        }
        items.push((p, b));
    }
    if !wait {
        if !table {
            let docs: Vec<&Progress> = items.iter().map(|(p, _)| p).collect();
            render::emit(out, &docs, String::new)?;
        }
        return Ok(0);
    }
    let done = follow(
        client,
        &mut items,
        Stage::OldKeyRevoked,
        timeout,
        started,
        style,
        table,
    )
    .await;
    let docs: Vec<&Progress> = items.iter().map(|(p, _)| p).collect();
    if table {
        if !done {
            for p in docs.iter().filter(|p| {
                p.stage < Stage::OldKeyRevoked
                    && p.stage != Stage::Ignored
                    && p.old_key_live_until.is_none()
            }) {
                println!(
                    "{}/{}: {} after {}: still at \"{}\"",
                    p.namespace,
                    p.name,
                    style.red("timed out"),
                    human(timeout),
                    p.stage.text()
                );
            }
        }
    } else {
        render::emit(out, &docs, String::new)?;
    }
    Ok(i32::from(!done))
}

/// ApiKeys whose current key matches a leaked key's hint: `status.keyHint` (equal, or one a
/// prefix of the other once masking characters are stripped, at least 6 characters),
/// `status.keyID`, or the `keysmith.dev/key-id` of its Secret.
pub async fn by_hint(client: &Client, sc: &Scope, hint: &str) -> Result<Vec<ApiKey>, PluginError> {
    fn norm(s: &str) -> String {
        s.trim()
            .trim_end_matches(['.', '…', '*', 'x', 'X'])
            .trim_start_matches(['.', '…', '*'])
            .to_string()
    }
    let h = norm(hint);
    if h.is_empty() {
        return Err(PluginError::Usage("--key-hint is empty".into()));
    }
    let keys = gather::apikeys(client, sc).await?;
    let secrets = gather::secrets_meta(client, sc.namespace.as_deref()).await?;
    Ok(keys
        .into_iter()
        .filter(|ak| {
            let st = ak.status.clone().unwrap_or_default();
            let hint_match = st.key_hint.as_deref().map(norm).is_some_and(|k| {
                k == h || (k.len().min(h.len()) >= 6 && (k.starts_with(&h) || h.starts_with(&k)))
            });
            let id_match = st.key_id.as_deref() == Some(hint.trim());
            let secret = st.secret_name.clone().unwrap_or_else(|| ak.secret_name());
            let ns = ak.namespace();
            let secret_match = secrets.iter().any(|s| {
                s.name_any() == secret
                    && s.namespace() == ns
                    && s.annotations()
                        .get(keysmith::api::KEY_ID_ANNOTATION)
                        .map(String::as_str)
                        == Some(hint.trim())
            });
            hint_match || id_match || secret_match
        })
        .collect())
}

pub async fn revoke_now(
    client: &Client,
    keys: Vec<ApiKey>,
    timeout: Duration,
    keep_zero_grace: bool,
    out: Output,
    style: &Style,
) -> Result<i32, PluginError> {
    let table = out == Output::Table;
    let value = request_value();
    let started = Instant::now();
    let mut items = Vec::new();
    for ak in &keys {
        let (p, b) = start(ak, &value);
        request(client, ak, &value, Some("0s")).await?;
        if table {
            println!(
                "apikey {}/{}: key {} — rotating with gracePeriod 0s (was {})",
                p.namespace,
                p.name,
                p.old_key_id.as_deref().unwrap_or("-"),
                p.grace_period.as_deref().unwrap_or("default 1h")
            );
        }
        items.push((p, b));
    }
    let done = follow(
        client,
        &mut items,
        Stage::OldKeyRevoked,
        timeout,
        started,
        style,
        table,
    )
    .await;
    // Put the grace period back, once the old key is gone: restored earlier, a rotation that is
    // still under way would give the leaked key the old grace period again.
    if !keep_zero_grace {
        for (p, _) in items
            .iter()
            .filter(|(p, _)| matches!(p.stage, Stage::OldKeyRevoked | Stage::Ignored))
        {
            let api: Api<ApiKey> = Api::namespaced(client.clone(), &p.namespace);
            let g: Value = match &p.grace_period {
                Some(g) => json!(g),
                None => Value::Null,
            };
            let patch = json!({"spec": {"rotation": {"gracePeriod": g}}});
            if let Err(e) = api
                .patch(&p.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                eprintln!(
                    "{} {}/{}: could not restore spec.rotation.gracePeriod: {}",
                    style.yellow("warning:"),
                    p.namespace,
                    p.name,
                    gather::bounded(&e.to_string())
                );
            }
        }
    }
    let docs: Vec<&Progress> = items.iter().map(|(p, _)| p).collect();
    if table {
        println!();
        println!("{}", style.bold("Summary"));
        for p in &docs {
            let verdict = if p.stage == Stage::OldKeyRevoked {
                style.green("revoked")
            } else if p.stage == Stage::Ignored {
                style.yellow("not rotated (pushed key: change its source Secret)")
            } else {
                style.red(&format!("NOT revoked (still at \"{}\")", p.stage.text()))
            };
            println!(
                "  {}/{}: old key {} {verdict}; new key {}",
                p.namespace,
                p.name,
                p.old_key_id.as_deref().unwrap_or("-"),
                p.new_key_id.as_deref().unwrap_or("-")
            );
            for (s, t) in &p.timings {
                println!(
                    "    {:<20} +{}",
                    s.text(),
                    human(Duration::from_secs_f64(*t))
                );
            }
            if !p.restarted.is_empty() {
                println!("    restarted: {}", p.restarted.join(", "));
            }
            if !matches!(p.stage, Stage::OldKeyRevoked | Stage::Ignored) {
                println!("    spec.rotation.gracePeriod left at 0s (the rotation is not through)");
            } else if !keep_zero_grace {
                println!(
                    "    spec.rotation.gracePeriod restored to {}",
                    p.grace_period.as_deref().unwrap_or("(unset: default 1h)")
                );
            }
        }
    } else {
        render::emit(out, &docs, String::new)?;
    }
    Ok(i32::from(
        !done || docs.iter().any(|p| p.stage != Stage::OldKeyRevoked),
    ))
}
