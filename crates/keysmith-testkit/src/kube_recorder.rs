//! A tower layer in front of a real Kubernetes client, for the controller tests
//! (`tests/controller/harness.rs`) and the reconcile benchmark (`benches/reconcile.rs`): it records every write the API server accepted, fails
//! Secret writes on demand, and checks each request against the RBAC the chart grants.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use keysmith::controller::rbac::{
    NAMESPACE_MODE_PERMISSIONS, PERMISSIONS, ROLLOUT_RESTART_PERMISSIONS,
};
use kube::Client;
use serde_json::{json, Value};

/// The writes the controller made: `"<verb> <what> <body>"`: `create <Kind> <body>`,
/// `patch <Kind> <body>` (server-side apply carries the kind, e.g. `patch Secret`; other patches
/// are `patch object`, Events `patch Event`), `patch status <name> <body>`, `delete <name>`,
/// `update`.
pub type Writes = Arc<Mutex<Vec<String>>>;

/// Failures to inject in front of the API server.
#[derive(Default)]
pub struct KubeFaults {
    /// Fail this many Secret writes (server-side apply of a Secret) with a 500.
    pub fail_secret_writes: AtomicU32,
    /// Fail this many ApiKey status writes that clear (or do not carry) `pendingCreate`, with a
    /// 500: the process "dies" after the Secret was written, before the key was recorded.
    pub fail_unmarked_status_writes: AtomicU32,
    /// Hold the next GET of the Secret of this name this long before sending it (a reconcile
    /// that takes time between its steps).
    pub delay_secret_get: Mutex<Option<(String, std::time::Duration)>>,
}

/// `(resource, name, subresource)` of an API path.
fn parse_path(path: &str) -> (String, Option<String>, Option<String>) {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    // /api/v1/... or /apis/<group>/<version>/...
    let rest: &[&str] = match parts.first() {
        Some(&"api") => parts.get(2..).unwrap_or(&[]),
        Some(&"apis") => parts.get(3..).unwrap_or(&[]),
        _ => &[],
    };
    let rest = if rest.len() > 2 && rest[0] == "namespaces" {
        &rest[2..]
    } else {
        rest
    };
    (
        rest.first().map(|s| s.to_string()).unwrap_or_default(),
        rest.get(1).map(|s| s.to_string()),
        rest.get(2).map(|s| s.to_string()),
    )
}

fn status_response(code: u16, message: &str) -> http::Response<kube::client::Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "reason": "InternalError", "code": code, "message": message});
    http::Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(kube::client::Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

/// The controller's client: every request is classified as RBAC sees it and must be covered by
/// `keysmith::controller::rbac::PERMISSIONS` (the list the chart's RBAC is checked against),
/// every write is recorded in `writes`, and Secret writes fail while `faults` says so.
pub fn instrumented(
    inner: Client,
    violations: Arc<Mutex<Vec<String>>>,
    writes: Writes,
    faults: Arc<KubeFaults>,
) -> Client {
    let svc = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        let inner = inner.clone();
        let violations = violations.clone();
        let writes = writes.clone();
        let faults = faults.clone();
        async move {
            let method = req.method().as_str().to_string();
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or("").to_string();
            match classify(&method, &path, &query) {
                Some((group, resource, verb)) if allowed(&group, &resource, &verb) => {}
                other => violations
                    .lock()
                    .unwrap()
                    .push(format!("{method} {path} -> {other:?}")),
            }
            if method == "GET" {
                let delay = {
                    let mut d = faults.delay_secret_get.lock().unwrap();
                    match parse_path(&path) {
                        (r, Some(n), None)
                            if r == "secrets" && d.as_ref().is_some_and(|(want, _)| *want == n) =>
                        {
                            d.take().map(|(_, wait)| wait)
                        }
                        _ => None,
                    }
                };
                if let Some(wait) = delay {
                    tokio::time::sleep(wait).await;
                }
            }
            // A server-side dry run writes nothing: passed through, not recorded.
            let dry_run = query.split('&').any(|q| q == "dryRun=All");
            if dry_run || !matches!(method.as_str(), "POST" | "PATCH" | "PUT" | "DELETE") {
                return inner.send(req).await;
            }
            let (parts, body) = req.into_parts();
            let bytes = body.collect_bytes().await?;
            let text = String::from_utf8_lossy(&bytes).to_string();
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let (resource, name, sub) = parse_path(&path);
            let name = name.unwrap_or_default();
            let kind_of_path = match resource.as_str() {
                "events" => "Event",
                "secrets" => "Secret",
                _ => "object",
            };
            let kind = v
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or(kind_of_path)
                .to_string();
            if matches!(method.as_str(), "POST" | "PATCH")
                && sub.is_none()
                && resource == "secrets"
                && faults
                    .fail_secret_writes
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
            {
                let verb = if method == "POST" { "create" } else { "patch" };
                writes
                    .lock()
                    .unwrap()
                    .push(format!("{verb} Secret (failed)"));
                return Ok(status_response(
                    500,
                    "injected: the API server is unavailable",
                ));
            }
            let record = match method.as_str() {
                "POST" => format!("create {kind} {text}"),
                "PATCH" if sub.as_deref() == Some("status") => {
                    if v["status"]["pendingCreate"].is_null()
                        && faults
                            .fail_unmarked_status_writes
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok()
                    {
                        writes.lock().unwrap().push("patch status (failed)".into());
                        return Ok(status_response(
                            500,
                            "injected: the API server is unavailable",
                        ));
                    }
                    format!("patch status {name} {text}")
                }
                "PATCH" => format!("patch {kind} {text}"),
                "DELETE" => format!("delete {name}"),
                _ => "update".to_string(),
            };
            let resp = inner
                .send(http::Request::from_parts(
                    parts,
                    kube::client::Body::from(bytes),
                ))
                .await?;
            // Only writes the API server accepted (a conflict or an invalid object wrote nothing).
            if resp.status().is_success() {
                writes.lock().unwrap().push(record);
            }
            Ok::<_, kube::Error>(resp)
        }
    });
    Client::new(svc, "default")
}

/// Whether `verb` on `group`/`resource` is in `PERMISSIONS` or
/// `ROLLOUT_RESTART_PERMISSIONS`.
fn allowed(group: &str, resource: &str, verb: &str) -> bool {
    PERMISSIONS
        .iter()
        .chain(ROLLOUT_RESTART_PERMISSIONS)
        .chain(NAMESPACE_MODE_PERMISSIONS)
        .any(|p| p.group == group && p.resource == resource && p.verbs.contains(&verb))
}

/// The (group, resource, verb) of an API request, as RBAC sees it.
fn classify(method: &str, path: &str, query: &str) -> Option<(String, String, String)> {
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    let rest: Vec<&str> = match rest {
        ["namespaces", _ns, tail @ ..] if !tail.is_empty() => tail.to_vec(),
        other => other.to_vec(),
    };
    let (resource, named) = match rest.as_slice() {
        [res] => (res.to_string(), false),
        [res, _name] => (res.to_string(), true),
        [res, _name, sub] => (format!("{res}/{sub}"), true),
        _ => return None,
    };
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match (method, named) {
        ("GET", true) => "get",
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return None,
    };
    Some((group.to_string(), resource, verb.to_string()))
}

#[cfg(test)]
mod rbac_tests {
    #[test]
    fn requests_are_classified_like_rbac() {
        let c = |m, p, q| super::classify(m, p, q).unwrap();
        assert_eq!(
            c("GET", "/api/v1/namespaces/a/secrets/s", ""),
            ("".into(), "secrets".into(), "get".into())
        );
        assert_eq!(
            c("GET", "/api/v1/namespaces/a/secrets", "watch=true"),
            ("".into(), "secrets".into(), "watch".into())
        );
        assert_eq!(
            c("GET", "/api/v1/namespaces/team-a", ""),
            ("".into(), "namespaces".into(), "get".into())
        );
        assert_eq!(
            c(
                "PATCH",
                "/apis/keysmith.dev/v1alpha1/namespaces/a/apikeys/k/status",
                ""
            ),
            (
                "keysmith.dev".into(),
                "apikeys/status".into(),
                "patch".into()
            )
        );
        assert_eq!(
            c(
                "GET",
                "/apis/keysmith.dev/v1alpha1/clusterkeyproviders/p",
                ""
            ),
            (
                "keysmith.dev".into(),
                "clusterkeyproviders".into(),
                "get".into()
            )
        );
        assert_eq!(
            c("POST", "/apis/events.k8s.io/v1/namespaces/a/events", ""),
            ("events.k8s.io".into(), "events".into(), "create".into())
        );
        assert_eq!(
            c("PATCH", "/apis/apps/v1/namespaces/a/deployments/web", ""),
            ("apps".into(), "deployments".into(), "patch".into())
        );
        assert!(super::allowed("apps", "deployments", "patch"));
        assert!(super::allowed("apps", "daemonsets", "get"));
        assert!(!super::allowed("apps", "deployments", "update"));
        assert!(!super::allowed("apps", "replicasets", "patch"));
        assert!(super::allowed("", "secrets", "patch"));
        assert!(!super::allowed("", "secrets", "deletecollection"));
    }
}
