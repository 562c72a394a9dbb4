//! A Kubernetes API test double for the controller: kube-fake-client 0.3 with keysmith's CRDs
//! and their status subresources, every write recorded, Secret-write failures injectable, and
//! two gaps of kube-fake-client bridged (see [`with_namespaces`]).
//!
//! Shared by the controller tests (`tests/controller/harness.rs`) and the offline reconcile
//! benchmark (`benches/reconcile.rs`), which include it with `#[path]`.
#![allow(dead_code)] // each includer uses a different part

use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::ByteString;
use kube::Client;
use kube_fake_client::{interceptor, ClientBuilder};
use serde_json::{json, Value};

use keysmith::api::{
    ApiKey, ClusterKeyProvider, ClusterKeyProviderSpec, KeyProvider, KeyProviderSpec,
};

/// One recorded write to the fake API: `"<verb> <what> <body>"`.
pub type Writes = Arc<Mutex<Vec<String>>>;

/// Failures to inject into the fake API.
#[derive(Default)]
pub struct KubeFaults {
    /// Fail this many Secret writes (server-side apply of a Secret).
    pub fail_secret_writes: std::sync::atomic::AtomicU32,
}

fn describe_patch(kind: &str, v: &Value) -> String {
    let k = v.get("kind").and_then(Value::as_str).unwrap_or(kind);
    format!("patch {k}")
}

/// Build the fake API holding `objects`, answering Namespace reads from `namespaces`. Every
/// write is appended to `writes` (cleared before returning, so the seed objects are not in it):
/// `create <Kind> <body>`, `patch Secret <body>` (server-side apply), `patch object <body>`
/// (other patches, e.g. the finalizer), `patch status <name> <body>`, `delete <name>`, `update`.
pub async fn fake_client(
    objects: Vec<Value>,
    namespaces: Vec<Namespace>,
    writes: Writes,
    faults: Arc<KubeFaults>,
) -> Client {
    let w1 = writes.clone();
    let w2 = writes.clone();
    let w3 = writes.clone();
    let w4 = writes.clone();
    let w5 = writes.clone();
    let funcs = interceptor::Funcs::new()
        .create(move |c| {
            let kind = c
                .object
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string();
            w1.lock()
                .unwrap()
                .push(format!("create {kind} {}", c.object));
            Ok(None)
        })
        .patch(move |c| {
            let what = describe_patch("object", c.patch);
            if what == "patch Secret"
                && faults
                    .fail_secret_writes
                    .load(std::sync::atomic::Ordering::SeqCst)
                    > 0
            {
                faults
                    .fail_secret_writes
                    .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                w2.lock().unwrap().push("patch Secret (failed)".into());
                return Err(kube_fake_client::Error::Internal(
                    "injected: the API server is unavailable".into(),
                ));
            }
            w2.lock().unwrap().push(format!("{what} {}", c.patch));
            Ok(None)
        })
        .patch_status(move |c| {
            w3.lock()
                .unwrap()
                .push(format!("patch status {} {}", c.name, c.patch));
            Ok(None)
        })
        .delete(move |c| {
            w4.lock().unwrap().push(format!("delete {}", c.name));
            Ok(None)
        })
        .update(move |_| {
            w5.lock().unwrap().push("update".into());
            Ok(None)
        });
    let mut b = ClientBuilder::new()
        .with_resource::<ApiKey>()
        .with_status_subresource::<ApiKey>()
        .with_resource::<KeyProvider>()
        .with_status_subresource::<KeyProvider>()
        .with_resource::<ClusterKeyProvider>()
        .with_status_subresource::<ClusterKeyProvider>()
        .with_interceptor_funcs(funcs);
    b = b.with_runtime_objects(objects);
    let fake = b.build().await.expect("fake client builds");
    let client = with_namespaces(fake, namespaces);
    writes.lock().unwrap().clear();
    client
}

/// Two gaps of kube-fake-client 0.3 are bridged here, in front of it:
/// - it cannot route `/api/v1/namespaces/{name}` (it reads "namespaces" as the start of a
///   namespaced path), so Namespace reads are answered from `namespaces`;
/// - it registers every custom resource as namespaced and files objects without a namespace
///   under `default`, so requests for the cluster-scoped ClusterKeyProvider are rewritten to
///   that namespace.
///
/// Every other request goes to the fake unchanged.
fn with_namespaces(fake: Client, namespaces: Vec<Namespace>) -> Client {
    let namespaces = Arc::new(namespaces);
    let svc = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        let fake = fake.clone();
        let namespaces = namespaces.clone();
        async move {
            let path = req.uri().path().to_string();
            let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
            if req.method() == http::Method::GET
                && parts.len() == 4
                && parts[..3] == ["api", "v1", "namespaces"]
            {
                let (status, body) = match namespaces.iter().find(|n| n.metadata.name.as_deref() == Some(parts[3])) {
                    Some(n) => (200, serde_json::to_vec(n).unwrap()),
                    None => (
                        404,
                        serde_json::to_vec(&json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": format!("namespaces \"{}\" not found", parts[3])})).unwrap(),
                    ),
                };
                let resp = http::Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(kube::client::Body::from(body))
                    .unwrap();
                return Ok::<_, kube::Error>(resp);
            }
            const CKP: &str = "/apis/keysmith.dev/v1alpha1/clusterkeyproviders";
            if let Some(rest) = path.strip_prefix(CKP) {
                let query = req
                    .uri()
                    .query()
                    .map(|q| format!("?{q}"))
                    .unwrap_or_default();
                let uri: http::Uri = format!("/apis/keysmith.dev/v1alpha1/namespaces/default/clusterkeyproviders{rest}{query}")
                    .parse()
                    .unwrap();
                let (mut parts, body) = req.into_parts();
                parts.uri = uri;
                return fake.send(http::Request::from_parts(parts, body)).await;
            }
            fake.send(req).await
        }
    });
    Client::new(svc, "default")
}

pub fn namespace(name: &str, labels: &[(&str, &str)]) -> Namespace {
    let mut n = Namespace::default();
    n.metadata.name = Some(name.into());
    n.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    n
}

pub fn secret(ns: &str, name: &str, key: &str, value: &str) -> Secret {
    let mut s = Secret::default();
    s.metadata.name = Some(name.into());
    s.metadata.namespace = Some(ns.into());
    s.data = Some([(key.to_string(), ByteString(value.as_bytes().to_vec()))].into());
    s
}

pub fn cluster_provider(name: &str, spec: KeyProviderSpec) -> ClusterKeyProvider {
    let mut p = ClusterKeyProvider::new(name, ClusterKeyProviderSpec { inner: spec });
    p.metadata.uid = Some(format!("uid-ckp-{name}"));
    p.metadata.generation = Some(1);
    p
}
