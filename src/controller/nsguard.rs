//! Namespace mode (`--watch-namespaces` with `--namespace-rolebinding`): keysmith's access to a
//! watched namespace is a RoleBinding **in** that namespace, and `kubectl delete namespace`
//! deletes it before the ApiKeys, whose finalizers wait for keysmith: without it keysmith could
//! neither revoke their keys nor release them, and the namespace stayed Terminating. While an
//! ApiKey of the namespace carries keysmith's finalizer, the RoleBinding carries
//! [`super::inuse::IN_USE_FINALIZER`] too (a RoleBinding being deleted still grants until it is gone; the
//! chart binds a ClusterRole, which a namespace deletion does not touch); it is released once
//! no ApiKey there does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::Api;
use kube::ResourceExt;

use super::context::Context;
use super::inuse::set_finalizer;
use crate::api::FINALIZER;

/// How often the watch store is looked at.
const PERIOD: Duration = Duration::from_secs(3);

/// Whether an ApiKey of namespace `ns` in the watch store carries keysmith's finalizer; None
/// when no store is set.
fn needed(ctx: &Context, ns: &str) -> Option<bool> {
    ctx.cache.any_apikey(|ak| {
        ak.namespace().as_deref() == Some(ns) && ak.finalizers().iter().any(|f| f == FINALIZER)
    })
}

/// Keep the finalizer on RoleBinding `name` of each watched namespace exactly while ApiKeys
/// there need keysmith, until `stop` resolves. A change is written once (then remembered); a
/// failure is logged and tried again.
pub async fn run(
    ctx: Arc<Context>,
    name: String,
    stop: impl std::future::Future<Output = ()> + Send,
) {
    let mut known: HashMap<String, bool> = HashMap::new();
    tokio::pin!(stop);
    loop {
        for ns in &ctx.settings.watch_namespaces {
            let Some(want) = needed(&ctx, ns) else {
                continue;
            };
            if known.get(ns) == Some(&want) {
                continue;
            }
            let api: Api<RoleBinding> = Api::namespaced(ctx.client.clone(), ns);
            match set_finalizer(&api, &name, want, None).await {
                Ok(()) => {
                    tracing::debug!(namespace = %ns, rolebinding = %name, finalizer = want, "namespace access guarded");
                    known.insert(ns.clone(), want);
                }
                Err(e) => {
                    tracing::warn!(namespace = %ns, rolebinding = %name, error = %e, "cannot set the finalizer on keysmith's RoleBinding (namespace deletion may hang)")
                }
            }
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(PERIOD) => {}
        }
    }
}
