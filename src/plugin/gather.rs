//! What the plugin reads from the API server, and the report it builds from it. Secrets are read
//! as metadata only (`list_metadata` / `get_metadata`): their data never reaches this process.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Pod, PodSpec, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ListParams};
use kube::core::PartialObjectMeta;
use kube::{Client, ResourceExt};
use serde::Serialize;

use keysmith::api::{
    ApiKey, ClusterKeyProvider, KeyProvider, ProviderKind, KEY_HASH_ANNOTATION, KEY_ID_ANNOTATION,
    OWNER_ANNOTATION,
};

use super::PluginError;

/// Longest condition message or note printed (a status is written by the operator, but it is
/// still bounded here).
const MAX_TEXT: usize = 300;

/// `s` cut to [`MAX_TEXT`] characters, control characters (terminal escapes a Secret annotation
/// or a provider message could carry) replaced by `?`.
pub fn bounded(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(MAX_TEXT)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().nth(MAX_TEXT).is_some() {
        out.push('…');
    }
    out
}

fn bounded_opt(s: Option<&String>) -> Option<String> {
    s.map(|s| bounded(s))
}

/// Which ApiKeys a command is about.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// `None`: every namespace (`-A`).
    pub namespace: Option<String>,
    pub names: Vec<String>,
    pub selector: Option<String>,
    /// `spec.providerRef.name`.
    pub provider: Option<String>,
}

/// Map a kube error to a message that names the verb and the resource.
pub fn api_err(verb: &str, resource: &str, ns: Option<&str>, e: kube::Error) -> PluginError {
    let place = match ns {
        Some(ns) => format!("{resource} in namespace {ns}"),
        None => format!("{resource} (all namespaces / cluster scope)"),
    };
    match e {
        kube::Error::Api(ae) if ae.code == 403 => PluginError::Forbidden(format!(
            "forbidden: you may not {verb} {place} (ask for RBAC `{verb}` on `{resource}`): {}",
            bounded(&ae.message)
        )),
        kube::Error::Api(ae) if ae.code == 404 => PluginError::NotFound(format!(
            "not found: {verb} {place}: {}",
            bounded(&ae.message)
        )),
        other => PluginError::Api(format!("{verb} {place}: {}", bounded(&other.to_string()))),
    }
}

/// The ApiKeys of a scope, sorted by namespace and name. Names that do not exist are an error.
pub async fn apikeys(client: &Client, scope: &Scope) -> Result<Vec<ApiKey>, PluginError> {
    let mut out = Vec::new();
    if !scope.names.is_empty() {
        let ns = scope.namespace.clone().unwrap_or_else(|| "default".into());
        let api: Api<ApiKey> = Api::namespaced(client.clone(), &ns);
        for name in &scope.names {
            match api.get_opt(name).await {
                Ok(Some(ak)) => out.push(ak),
                Ok(None) => {
                    return Err(PluginError::NotFound(format!(
                        "not found: apikey {name:?} in namespace {ns}"
                    )))
                }
                Err(e) => return Err(api_err("get", "apikeys.keysmith.dev", Some(&ns), e)),
            }
        }
    } else {
        let api: Api<ApiKey> = match &scope.namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let mut lp = ListParams::default();
        if let Some(s) = &scope.selector {
            lp = lp.labels(s);
        }
        out = api
            .list(&lp)
            .await
            .map_err(|e| {
                api_err(
                    "list",
                    "apikeys.keysmith.dev",
                    scope.namespace.as_deref(),
                    e,
                )
            })?
            .items;
    }
    if let Some(p) = &scope.provider {
        out.retain(|ak| &ak.spec.provider_ref.name == p);
    }
    out.sort_by_key(|a| (a.namespace().unwrap_or_default(), a.name_any()));
    Ok(out)
}

#[derive(Serialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct ProviderInfo {
    pub kind: String,
    pub name: String,
    pub found: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the credentials were last verified (Ready=True since).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified_at: Option<String>,
    /// Why the provider object could not be read (forbidden), if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
}

#[derive(Serialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct SecretInfo {
    pub name: String,
    pub exists: bool,
    /// `keysmith.dev/key-id` of the Secret: the key whose value it holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_hash: Option<String>,
    /// `keysmith.dev/apikey` of the Secret (`namespace/name`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Last write by keysmith (managedFields), else creation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub written_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
}

#[derive(Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadInfo {
    pub kind: String,
    pub name: String,
    /// How the pod template uses the Secret (`volume`, `env KEY`, `envFrom`); empty for a
    /// restart target that does not use it.
    pub uses: Vec<String>,
    pub ready: i64,
    pub desired: i64,
    /// Pods that exist (created by its controller), ready or not.
    pub pods: i64,
    /// Reloader (stakater) restarts it when the Secret changes: `reloader.stakater.com/auto`, or
    /// the Secret named in `secret.reloader.stakater.com/reload`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reloader: bool,
    pub restart_target: bool,
    /// Restart target that does not exist.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub missing: bool,
    /// Whether keysmith can restart this kind at all (Deployment, StatefulSet, DaemonSet).
    pub restartable: bool,
}

#[derive(Serialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct PreviousKeyInfo {
    pub key_id: String,
    pub delete_after: String,
}

#[derive(Serialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct KeyInfo {
    pub live: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_hint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<keysmith::api::Usage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_rotated_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_rotation_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation_in_progress: Option<String>,
    pub previous_keys: Vec<PreviousKeyInfo>,
}

#[derive(Serialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct ConditionInfo {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// What to do about it.
    pub hint: String,
}

#[derive(Serialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct KeyReport {
    pub namespace: String,
    pub name: String,
    pub provider: ProviderInfo,
    pub secret: SecretInfo,
    pub workloads: Vec<WorkloadInfo>,
    pub key: KeyInfo,
    /// Conditions that are not True.
    pub conditions: Vec<ConditionInfo>,
    /// Everything wrong, one line each (empty: healthy).
    pub problems: Vec<String>,
    /// Worth knowing, not wrong.
    pub notes: Vec<String>,
}

/// kind, name, pod template, ready, desired, pods that exist.
type Item = (String, String, Option<PodSpec>, i64, i64, i64);

/// Workloads of one namespace, listed once.
#[derive(Default)]
pub struct Workloads {
    items: Vec<Item>,
    /// The workload's own annotations, by the index of `items` (Reloader's).
    annotations: Vec<BTreeMap<String, String>>,
    pub unreadable: Vec<String>,
}

fn ready_of(c: &[Condition]) -> Option<&Condition> {
    c.iter().find(|c| c.type_ == "Ready")
}

fn ts(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> String {
    t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

impl Workloads {
    pub async fn list(client: &Client, ns: &str) -> Workloads {
        let mut w = Workloads::default();
        let lp = ListParams::default();
        macro_rules! each {
            ($ty:ty, $res:expr, |$o:ident| $body:expr) => {
                match Api::<$ty>::namespaced(client.clone(), ns).list(&lp).await {
                    Ok(list) => {
                        for $o in list.items {
                            let ann = $o.metadata.annotations.clone().unwrap_or_default();
                            if let Some(x) = $body {
                                w.items.push(x);
                                w.annotations.push(ann);
                            }
                        }
                    }
                    Err(e) => w
                        .unreadable
                        .push(api_err("list", $res, Some(ns), e).to_string()),
                }
            };
        }
        each!(Deployment, "deployments.apps", |d| {
            let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1) as i64;
            let ready = d
                .status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0) as i64;
            let pods = d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0) as i64;
            let spec = d.spec.as_ref().and_then(|s| s.template.spec.clone());
            Some((
                "Deployment".to_string(),
                d.name_any(),
                spec,
                ready,
                desired,
                pods,
            ))
        });
        each!(StatefulSet, "statefulsets.apps", |d| {
            let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1) as i64;
            let ready = d
                .status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0) as i64;
            let pods = d.status.as_ref().map(|s| s.replicas).unwrap_or(0) as i64;
            let spec = d.spec.as_ref().and_then(|s| s.template.spec.clone());
            Some((
                "StatefulSet".to_string(),
                d.name_any(),
                spec,
                ready,
                desired,
                pods,
            ))
        });
        each!(DaemonSet, "daemonsets.apps", |d| {
            let st = d.status.as_ref();
            let desired = st.map(|s| s.desired_number_scheduled).unwrap_or(0) as i64;
            let ready = st.map(|s| s.number_ready).unwrap_or(0) as i64;
            let pods = st.map(|s| s.current_number_scheduled).unwrap_or(0) as i64;
            let spec = d.spec.as_ref().and_then(|s| s.template.spec.clone());
            Some((
                "DaemonSet".to_string(),
                d.name_any(),
                spec,
                ready,
                desired,
                pods,
            ))
        });
        each!(Job, "jobs.batch", |j| {
            // Jobs of a CronJob are reported through the CronJob.
            let owned = j
                .owner_references()
                .iter()
                .any(|o| o.kind == "CronJob" && o.controller == Some(true));
            if owned {
                None
            } else {
                let desired = j.spec.as_ref().and_then(|s| s.parallelism).unwrap_or(1) as i64;
                let ready = j.status.as_ref().and_then(|s| s.ready).unwrap_or(0) as i64;
                let pods = j.status.as_ref().and_then(|s| s.active).unwrap_or(0) as i64;
                let spec = j.spec.as_ref().and_then(|s| s.template.spec.clone());
                Some(("Job".to_string(), j.name_any(), spec, ready, desired, pods))
            }
        });
        each!(CronJob, "cronjobs.batch", |c| {
            let active = c
                .status
                .as_ref()
                .and_then(|s| s.active.as_ref())
                .map_or(0, |a| a.len()) as i64;
            let suspended = c.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false);
            let spec = c
                .spec
                .as_ref()
                .and_then(|s| s.job_template.spec.as_ref())
                .and_then(|s| s.template.spec.clone());
            Some((
                "CronJob".to_string(),
                c.name_any(),
                spec,
                active,
                if suspended { 0 } else { active },
                active,
            ))
        });
        each!(Pod, "pods", |p| {
            // Only bare Pods: pods of a controller are counted through it.
            if p.owner_references()
                .iter()
                .any(|o| o.controller == Some(true))
            {
                None
            } else {
                let ready = p
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                Some((
                    "Pod".to_string(),
                    p.name_any(),
                    p.spec.clone(),
                    i64::from(ready),
                    1,
                    1,
                ))
            }
        });
        w
    }

    /// Every workload using `secret`, plus the restart targets of `ak` (flagged when they do
    /// not use it or do not exist).
    pub fn for_secret(&self, secret: &str, targets: &[(String, String)]) -> Vec<WorkloadInfo> {
        let mut out = Vec::new();
        for (i, (kind, name, spec, ready, desired, pods)) in self.items.iter().enumerate() {
            let uses = spec.as_ref().map(|s| uses(s, secret)).unwrap_or_default();
            let restart_target = targets.iter().any(|(k, n)| k == kind && n == name);
            if uses.is_empty() && !restart_target {
                continue;
            }
            out.push(WorkloadInfo {
                kind: kind.clone(),
                name: name.clone(),
                uses,
                ready: *ready,
                desired: *desired,
                pods: *pods,
                reloader: self.annotations.get(i).is_some_and(|a| reloader(a, secret)),
                restart_target,
                missing: false,
                restartable: matches!(kind.as_str(), "Deployment" | "StatefulSet" | "DaemonSet"),
            });
        }
        for (k, n) in targets {
            if !out.iter().any(|w| &w.kind == k && &w.name == n) {
                out.push(WorkloadInfo {
                    kind: k.clone(),
                    name: n.clone(),
                    restart_target: true,
                    missing: true,
                    restartable: true,
                    ..Default::default()
                });
            }
        }
        out.sort_by(|a, b| (&a.kind, &a.name).cmp(&(&b.kind, &b.name)));
        out
    }
}

/// Whether Reloader restarts a workload with these annotations when `secret` changes.
pub fn reloader(a: &BTreeMap<String, String>, secret: &str) -> bool {
    a.get("reloader.stakater.com/auto").map(String::as_str) == Some("true")
        || a.get("secret.reloader.stakater.com/auto")
            .map(String::as_str)
            == Some("true")
        || a.get("secret.reloader.stakater.com/reload")
            .is_some_and(|v| v.split(',').any(|s| s.trim() == secret))
}

/// How a pod spec uses a Secret: volumes (also projected), env valueFrom, envFrom.
pub fn uses(spec: &PodSpec, secret: &str) -> Vec<String> {
    let mut out = BTreeSet::new();
    for v in spec.volumes.iter().flatten() {
        if v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some(secret) {
            out.insert(format!("volume {}", v.name));
        }
        let projected = v
            .projected
            .as_ref()
            .and_then(|p| p.sources.as_ref())
            .is_some_and(|s| {
                s.iter()
                    .any(|s| s.secret.as_ref().map(|s| s.name.as_str()) == Some(secret))
            });
        if projected {
            out.insert(format!("volume {} (projected)", v.name));
        }
    }
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for c in containers {
        for e in c.env.iter().flatten() {
            let r = e
                .value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref());
            if r.map(|r| r.name.as_str()) == Some(secret) {
                out.insert(format!("env {}", e.name));
            }
        }
        for e in c.env_from.iter().flatten() {
            if e.secret_ref.as_ref().map(|r| r.name.as_str()) == Some(secret) {
                out.insert("envFrom".to_string());
            }
        }
    }
    out.into_iter().collect()
}

/// What to do about a Ready reason (README's reason table, in one line).
pub fn hint(reason: &str) -> &'static str {
    match reason {
        "NewKeyNeeded" => "set spec.onImmutableChange: Replace, or revert the field",
        "UnsupportedField" => "remove the field this provider cannot honour",
        "InvalidSpec" => "fix the value named in the message",
        "SecretConflict" => "the Secret is not keysmith's: rename spec.secret.name, or annotate the Secret keysmith.dev/allow-overwrite=true",
        "SourceNotFound" => "create the spec.source Secret and key",
        "ProviderRefNotFound" => "create the provider object, or fix spec.providerRef",
        "ProviderNotAllowed" => "the provider's namespaceSelector must admit this namespace",
        "CredentialsNotFound" => "create the provider's credentials Secret and key",
        "InvalidProvider" => "fix the provider object (kubectl describe it)",
        "ProviderAuthFailed" => "renew the provider credentials in their Secret",
        "ProviderRejected" => "the provider refused the request: read the message, fix the spec",
        "ProviderNotFound" => "the key is gone at the provider: fix spec.keyRef, or delete and recreate the ApiKey",
        "RateLimited" | "ProviderUnavailable" | "KubernetesError" | "RecoveringCreate"
        | "InternalError" | "LeaseExpiring" => "transient: keysmith retries with backoff",
        "UnsupportedOperation" => "the provider does not offer this; see docs/providers",
        "SecretWriteRefused" => "a quota or admission webhook refuses the Secret: fix it",
        "CreateBackoff" => "creates keep failing: read the message; the next try is at status.createBackoff.notBefore",
        "AdoptionRefused" => "the key belongs to another ApiKey, or the provider does not allow adoption here",
        _ => "kubectl describe the object for details",
    }
}

fn limit_text(ak: &ApiKey) -> Option<String> {
    ak.spec.limit.as_ref().map(|l| {
        let reset = l.reset.map(|r| r.as_str()).unwrap_or("never");
        format!("{} (reset {reset})", l.amount)
    })
}

/// Parse an RFC 3339 time.
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Everything `status` reports, for the ApiKeys given.
pub async fn reports(client: &Client, keys: &[ApiKey]) -> Vec<KeyReport> {
    let mut workloads: HashMap<String, Workloads> = HashMap::new();
    let mut providers: HashMap<(ProviderKind, String, String), ProviderInfo> = HashMap::new();
    let mut out = Vec::new();
    let now = Utc::now();
    for ak in keys {
        let ns = ak.namespace().unwrap_or_default();
        let name = ak.name_any();
        let st = ak.status.clone().unwrap_or_default();
        let mut problems = Vec::new();
        let mut notes = Vec::new();

        // Provider object.
        let pref = &ak.spec.provider_ref;
        let pkey = (
            pref.kind,
            if pref.kind == ProviderKind::KeyProvider {
                ns.clone()
            } else {
                String::new()
            },
            pref.name.clone(),
        );
        if !providers.contains_key(&pkey) {
            let info = provider(client, pref.kind, &ns, &pref.name).await;
            providers.insert(pkey.clone(), info);
        }
        let provider = providers[&pkey].clone();
        if let Some(why) = &provider.unreadable {
            notes.push(why.clone());
        } else if !provider.found {
            problems.push(format!(
                "{} {} does not exist",
                provider.kind, provider.name
            ));
        } else if provider.ready.as_deref() != Some("True") {
            problems.push(format!(
                "{} {} is not Ready ({})",
                provider.kind,
                provider.name,
                provider.reason.as_deref().unwrap_or("no status yet")
            ));
        }

        // Secret (metadata only).
        let secret_name = st.secret_name.clone().unwrap_or_else(|| ak.secret_name());
        let secret = secret_meta(client, &ns, &secret_name).await;
        if let Some(why) = &secret.unreadable {
            notes.push(why.clone());
        } else if !secret.exists {
            problems.push(format!("Secret {secret_name} does not exist"));
        } else if let (Some(a), Some(b)) = (&secret.key_id, &st.key_id) {
            if a != b
                && st
                    .rotation
                    .as_ref()
                    .and_then(|r| r.in_progress.as_ref())
                    .is_none()
            {
                problems.push(format!(
                    "Secret {secret_name} holds key {a}, the status says key {b}"
                ));
            }
        }

        // Workloads.
        if !workloads.contains_key(&ns) {
            workloads.insert(ns.clone(), Workloads::list(client, &ns).await);
        }
        let wl = &workloads[&ns];
        notes.extend(wl.unreadable.iter().cloned());
        let targets: Vec<(String, String)> = ak
            .spec
            .rollout_restart_targets
            .iter()
            .map(|t| (t.kind.to_string(), t.name.clone()))
            .collect();
        let used_by = wl.for_secret(&secret_name, &targets);
        for w in &used_by {
            if w.missing {
                problems.push(format!(
                    "restart target {}/{} does not exist",
                    w.kind, w.name
                ));
            } else if w.restart_target && w.uses.is_empty() {
                problems.push(format!(
                    "restart target {}/{} does not use Secret {secret_name}",
                    w.kind, w.name
                ));
            } else if !w.restart_target && w.reloader {
                notes.push(format!(
                    "{}/{} uses Secret {secret_name} and is restarted by Reloader on a change (not a restart target)",
                    w.kind, w.name
                ));
            } else if !w.restart_target && w.restartable {
                problems.push(format!(
                    "{}/{} uses Secret {secret_name} but is not in spec.rolloutRestartTargets: it keeps the old value after a rotation until it restarts",
                    w.kind, w.name
                ));
            } else if !w.restart_target {
                notes.push(format!(
                    "{}/{} uses Secret {secret_name}; keysmith does not restart {}s, new pods read the new value",
                    w.kind, w.name, w.kind
                ));
            }
        }

        // The key as last observed.
        let ready = ready_of(&st.conditions);
        let live = ready.is_some_and(|c| c.status == "True");
        let key = KeyInfo {
            live,
            key_id: bounded_opt(st.key_id.as_ref()),
            key_hint: bounded_opt(st.key_hint.as_ref()),
            created_at: st.created_at.clone(),
            expires_at: st.expires_at.clone(),
            last_used_at: st.last_used_at.clone(),
            limit: limit_text(ak),
            usage: st.usage.clone(),
            last_rotated_at: st.last_rotated_at.clone(),
            next_rotation_at: st.next_rotation_at.clone(),
            rotation_in_progress: st
                .rotation
                .as_ref()
                .and_then(|r| r.in_progress.as_ref())
                .map(|p| format!("{} since {}", p.trigger, p.started_at)),
            previous_keys: st
                .previous_keys
                .iter()
                .map(|p| PreviousKeyInfo {
                    key_id: p.key_id.clone(),
                    delete_after: p.delete_after.clone(),
                })
                .collect(),
        };
        if let Some(exp) = st.expires_at.as_deref().and_then(parse_time) {
            if exp <= now {
                problems.push(format!(
                    "the key expired at {}",
                    st.expires_at.clone().unwrap_or_default()
                ));
            }
        }
        if ready.is_none() {
            problems.push("no Ready condition yet (is the operator running?)".to_string());
        }
        if let (Some(g), Some(o)) = (ak.metadata.generation, st.observed_generation) {
            if o < g {
                notes.push(format!(
                    "the status is of generation {o}, the spec is generation {g}: keysmith has not reconciled the latest change yet"
                ));
            }
        }
        let conditions: Vec<ConditionInfo> = st
            .conditions
            .iter()
            .filter(|c| c.status != "True")
            .map(|c| ConditionInfo {
                type_: c.type_.clone(),
                status: c.status.clone(),
                reason: bounded(&c.reason),
                message: bounded(&c.message),
                since: Some(ts(&c.last_transition_time)),
                hint: hint(&c.reason).to_string(),
            })
            .collect();
        for c in &conditions {
            problems.push(format!("{}={} {}", c.type_, c.status, c.reason));
        }
        out.push(KeyReport {
            namespace: ns,
            name,
            provider,
            secret,
            workloads: used_by,
            key,
            conditions,
            problems,
            notes,
        });
    }
    out
}

async fn provider(client: &Client, kind: ProviderKind, ns: &str, name: &str) -> ProviderInfo {
    let (kind_s, res) = match kind {
        ProviderKind::KeyProvider => ("KeyProvider", "keyproviders.keysmith.dev"),
        ProviderKind::ClusterKeyProvider => {
            ("ClusterKeyProvider", "clusterkeyproviders.keysmith.dev")
        }
    };
    let mut info = ProviderInfo {
        kind: kind_s.into(),
        name: name.into(),
        ..Default::default()
    };
    let got = match kind {
        ProviderKind::KeyProvider => Api::<KeyProvider>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await
            .map(|o| o.map(|p| p.status.unwrap_or_default())),
        ProviderKind::ClusterKeyProvider => Api::<ClusterKeyProvider>::all(client.clone())
            .get_opt(name)
            .await
            .map(|o| o.map(|p| p.status.unwrap_or_default())),
    };
    let nsopt = (kind == ProviderKind::KeyProvider).then_some(ns);
    match got {
        Ok(Some(st)) => {
            info.found = true;
            info.provider_type = st.provider_type.clone();
            if let Some(c) = ready_of(&st.conditions) {
                info.ready = Some(c.status.clone());
                info.reason = Some(c.reason.clone());
                if c.status != "True" {
                    info.message = Some(bounded(&c.message));
                } else {
                    info.verified_at = Some(ts(&c.last_transition_time));
                }
            }
        }
        Ok(None) => {}
        Err(e) => info.unreadable = Some(api_err("get", res, nsopt, e).to_string()),
    }
    info
}

async fn secret_meta(client: &Client, ns: &str, name: &str) -> SecretInfo {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut info = SecretInfo {
        name: name.into(),
        ..Default::default()
    };
    match api.get_metadata_opt(name).await {
        Ok(Some(m)) => fill_secret(&mut info, &m),
        Ok(None) => {}
        Err(e) => info.unreadable = Some(api_err("get", "secrets", Some(ns), e).to_string()),
    }
    info
}

fn fill_secret(info: &mut SecretInfo, m: &PartialObjectMeta<Secret>) {
    info.exists = true;
    let a = m.annotations();
    // Annotations are anyone's who may write the Secret: bounded, no control characters.
    info.key_id = bounded_opt(a.get(KEY_ID_ANNOTATION));
    info.key_hash = bounded_opt(a.get(KEY_HASH_ANNOTATION));
    info.owner = bounded_opt(a.get(OWNER_ANNOTATION));
    let written = m
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|f| f.manager.as_deref() == Some(keysmith::api::FIELD_MANAGER))
        .filter_map(|f| f.time.as_ref())
        .map(ts)
        .max();
    info.written_at = written.or_else(|| m.metadata.creation_timestamp.as_ref().map(ts));
}

/// Secrets of a namespace (metadata only), by name.
pub async fn secrets_meta(
    client: &Client,
    ns: Option<&str>,
) -> Result<Vec<PartialObjectMeta<Secret>>, PluginError> {
    let api: Api<Secret> = match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    Ok(api
        .list_metadata(&ListParams::default())
        .await
        .map_err(|e| api_err("list", "secrets", ns, e))?
        .items)
}

/// Spend of a key as a number, from `status.usage` (total, else monthly, weekly, daily).
pub fn spend(ak: &ApiKey) -> (f64, String) {
    let Some(u) = ak.status.as_ref().and_then(|s| s.usage.as_ref()) else {
        return (0.0, String::new());
    };
    let v = [&u.total, &u.monthly, &u.weekly, &u.daily]
        .into_iter()
        .flatten()
        .find_map(|s| s.parse::<f64>().ok().filter(|f| f.is_finite()))
        .unwrap_or(0.0);
    (v, u.unit.clone().unwrap_or_default())
}

/// Group spend by a key function.
pub fn group_spend(
    keys: &[ApiKey],
    by: impl Fn(&ApiKey) -> String,
) -> BTreeMap<String, (f64, usize, String)> {
    let mut m: BTreeMap<String, (f64, usize, String)> = BTreeMap::new();
    for ak in keys {
        let (v, unit) = spend(ak);
        let e = m.entry(by(ak)).or_insert((0.0, 0, unit.clone()));
        e.0 += v;
        e.1 += 1;
        if e.2 != unit && !unit.is_empty() {
            if e.2.is_empty() {
                e.2 = unit;
            } else if !e.2.contains('/') {
                e.2 = format!("{}/{}", e.2, unit);
            }
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_cuts_and_replaces_control_characters() {
        assert_eq!(bounded("a\u{1b}[31mb\n"), "a?[31mb?");
        let long = "x".repeat(MAX_TEXT + 5);
        let b = bounded(&long);
        assert_eq!(b.chars().count(), MAX_TEXT + 1);
        assert!(b.ends_with('…'));
        assert_eq!(bounded(&"y".repeat(MAX_TEXT)), "y".repeat(MAX_TEXT));
    }

    #[test]
    fn uses_finds_volumes_env_and_env_from_in_init_containers_too() {
        let spec: PodSpec = serde_json::from_value(serde_json::json!({
            "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "s"}}]}],
            "containers": [{"name": "c", "env": [
                {"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                {"name": "B", "valueFrom": {"secretKeyRef": {"name": "other", "key": "k"}}}]}],
            "volumes": [{"name": "v", "secret": {"secretName": "s"}},
                        {"name": "p", "projected": {"sources": [{"secret": {"name": "s"}}]}},
                        {"name": "o", "secret": {"secretName": "other"}}]
        }))
        .unwrap();
        assert_eq!(
            uses(&spec, "s"),
            ["env A", "envFrom", "volume p (projected)", "volume v"]
        );
        assert!(uses(&spec, "nothing").is_empty());
    }

    #[test]
    fn reloader_annotations() {
        let a = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        assert!(reloader(&a("reloader.stakater.com/auto", "true"), "s"));
        assert!(reloader(
            &a("secret.reloader.stakater.com/reload", "x, s"),
            "s"
        ));
        assert!(!reloader(
            &a("secret.reloader.stakater.com/reload", "x,ss"),
            "s"
        ));
        assert!(!reloader(&a("reloader.stakater.com/auto", "false"), "s"));
        assert!(!reloader(&BTreeMap::new(), "s"));
    }
}
