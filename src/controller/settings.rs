//! What an installation is told once, at start (`keysmith run`'s flags): built before the
//! [`super::context::Context`] and never changed after. Tests build one with struct update
//! syntax: `Settings { namespaced_providers: false, ..Settings::default() }`.

use std::time::Duration;

use crate::providers::egress::NetworkPolicy;
use crate::providers::ClientOptions;

/// The installation's settings (see the module documentation).
#[derive(Clone, Debug)]
pub struct Settings {
    /// The operator's namespace: default namespace of ClusterKeyProvider credential Secrets.
    pub operator_namespace: String,
    /// The `reportingController` of keysmith's Events.
    pub reporter: String,
    /// ClusterKeyProviders are served (see `keysmith run --cluster-providers`).
    pub cluster_providers: bool,
    /// Namespaced KeyProviders are served (see `keysmith run --namespaced-providers`).
    pub namespaced_providers: bool,
    /// The namespaces served (`keysmith run --watch-namespaces`); empty: every namespace. In
    /// namespace mode ApiKeys are only ever listed per watched namespace (the namespace-mode
    /// RBAC grants nothing cluster-wide on them), see [`super::inuse::scan_apikeys`].
    pub watch_namespaces: Vec<String>,
    /// When not empty, the only hosts a provider object's base URL may name
    /// (`keysmith run --allowed-base-url-hosts`, trimmed and lower-cased).
    pub allowed_base_url_hosts: Vec<String>,
    /// Where namespaced KeyProviders may connect (`keysmith run
    /// --allow-private-provider-networks`, `--allow-insecure-http`); restricted by default.
    /// ClusterKeyProviders are not restricted.
    pub namespaced_network: NetworkPolicy,
    /// HTTP options applied to every provider client (tests shorten timeouts). The context adds
    /// its metrics and its leader Lease's write gate when it is built.
    pub client_options: ClientOptions,
    /// How long a workload restart waits for more Secrets of the same burst
    /// ([`super::restart::DEBOUNCE_WINDOW`]; tests set zero).
    pub restart_debounce: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            operator_namespace: "keysmith-system".into(),
            reporter: "keysmith".into(),
            cluster_providers: true,
            namespaced_providers: true,
            watch_namespaces: Vec::new(),
            allowed_base_url_hosts: Vec::new(),
            namespaced_network: NetworkPolicy::RESTRICTED,
            client_options: ClientOptions::default(),
            restart_debounce: super::restart::DEBOUNCE_WINDOW,
        }
    }
}

impl Settings {
    /// Whether namespace `ns` is served by this installation.
    pub fn serves_namespace(&self, ns: &str) -> bool {
        self.watch_namespaces.is_empty() || self.watch_namespaces.iter().any(|w| w == ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_namespace_is_served_unless_some_are_named() {
        let all = Settings::default();
        assert!(all.serves_namespace("team-a"));
        let some = Settings {
            watch_namespaces: vec!["team-a".into()],
            ..Settings::default()
        };
        assert!(some.serves_namespace("team-a"));
        assert!(!some.serves_namespace("team-b"));
        assert_eq!(some.namespaced_network, NetworkPolicy::RESTRICTED);
    }
}
