//! The Kubernetes API permissions the controller uses: the one list both the Helm chart's RBAC
//! (checked in `tests/chart.rs`) and the controller's actual requests (every request the
//! controller tests make is classified by `keysmith_testkit::kube_recorder` and must be in
//! [`PERMISSIONS`]) are held against.

/// One resource and the verbs used on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permission {
    /// API group (`""` for the core group).
    pub group: &'static str,
    /// Resource, with `/subresource` where one is used.
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
}

const fn p(
    group: &'static str,
    resource: &'static str,
    verbs: &'static [&'static str],
) -> Permission {
    Permission {
        group,
        resource,
        verbs,
    }
}

/// Everything `keysmith run` does against the API server.
pub const PERMISSIONS: &[Permission] = &[
    // ApiKeys: watched; finalizer added/removed with patches; status written with merge patches.
    p(
        "keysmith.dev",
        "apikeys",
        &["get", "list", "watch", "patch"],
    ),
    p("keysmith.dev", "apikeys/status", &["patch"]),
    // Owner references with blockOwnerDeletion on the Secrets need update on the finalizers subresource.
    p("keysmith.dev", "apikeys/finalizers", &["update"]),
    // Provider objects: the in-use finalizer (keysmith.dev/in-use) is added/removed with patches.
    p(
        "keysmith.dev",
        "keyproviders",
        &["get", "list", "watch", "patch"],
    ),
    p("keysmith.dev", "keyproviders/status", &["patch"]),
    p(
        "keysmith.dev",
        "clusterkeyproviders",
        &["get", "list", "watch", "patch"],
    ),
    p("keysmith.dev", "clusterkeyproviders/status", &["patch"]),
    // Budgets: listed by each budget pass, their status written with merge patches.
    p("keysmith.dev", "keybudgets", &["list"]),
    p("keysmith.dev", "keybudgets/status", &["patch"]),
    p("keysmith.dev", "clusterkeybudgets", &["list"]),
    p("keysmith.dev", "clusterkeybudgets/status", &["patch"]),
    // Secrets: written by server-side apply (patch) or created; credentials and source Secrets
    // are read; labelled ones watched. Never deleted (a Secret whose type must change is left
    // to the user; keysmith's own go with their ApiKey by garbage collection).
    p("", "secrets", &["get", "list", "watch", "create", "patch"]),
    // A provider object's spec.caBundle may be a ConfigMap key: read when its backend is built.
    p("", "configmaps", &["get"]),
    // ClusterKeyProvider namespaceSelector: namespace labels, watched (metadata only).
    p("", "namespaces", &["get", "list", "watch"]),
    p("events.k8s.io", "events", &["create", "patch"]),
    // Leader election (src/controller/leader.rs: read, create, and merge patches carrying the
    // resourceVersion read, to acquire, renew and release conditionally).
    p("coordination.k8s.io", "leases", &["get", "create", "patch"]),
];

/// What `spec.rolloutRestartTargets` needs, granted only with the chart's
/// `rolloutRestart.enabled` (patching a pod template is a strong permission: it is opt-in).
/// `patch` sets the restart annotation; `get` reads the rollout status the grace period of a
/// replaced key waits for. Without them restarts are reported as refused and keys still work.
pub const ROLLOUT_RESTART_PERMISSIONS: &[Permission] = &[
    p("apps", "deployments", &["get", "patch"]),
    p("apps", "statefulsets", &["get", "patch"]),
    p("apps", "daemonsets", &["get", "patch"]),
];

/// Namespace mode (`--watch-namespaces` with `--namespace-rolebinding`): in each watched
/// namespace, `get`/`patch` on keysmith's own RoleBinding only (`resourceNames`), to keep a
/// finalizer on it while ApiKeys there hold keys (see `controller::nsguard`).
pub const NAMESPACE_MODE_PERMISSIONS: &[Permission] = &[p(
    "rbac.authorization.k8s.io",
    "rolebindings",
    &["get", "patch"],
)];
