//! Prometheus metrics. Reconcile metrics use controller-runtime's names and labels so existing
//! dashboards work; every label is a static category, never an object name or error text.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

pub mod per_key;

// The provider request metrics live with the clients that record them.
pub use keysmith_providers::metrics::ProviderMetrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub controller: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadyLabels {
    pub provider: String,
    pub ready: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KubeWriteLabels {
    pub resource: String,
    pub verb: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabel {
    pub provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RotationLabels {
    pub provider: String,
    /// `Schedule`, `BeforeExpiry`, `OnDemand` or `SourceChanged`.
    pub trigger: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BudgetLabels {
    /// The KeyBudget's namespace; empty for a ClusterKeyBudget.
    pub namespace: String,
    pub budget: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BudgetProviderLabels {
    pub namespace: String,
    pub budget: String,
    pub provider: String,
}

/// Most budgets exported as metrics (each is a handful of series); budgets beyond are counted
/// in `keysmith_budget_series_dropped` instead.
pub const MAX_BUDGET_SERIES: usize = 2000;

/// `keysmith_budget_*`: one set of series per budget, labelled by namespace, budget and provider
/// type only (never a key or its id).
#[derive(Default)]
pub struct BudgetMetrics {
    pub spent: Family<BudgetProviderLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub amount: Family<BudgetLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub ratio: Family<BudgetLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub not_measured: Family<BudgetLabels, Gauge>,
    pub thresholds: Family<BudgetLabels, Counter>,
    pub dropped: Gauge,
    /// The series of each budget exported by the last pass: (namespace, budget) → providers.
    exported: Mutex<HashMap<(String, String), Vec<String>>>,
}

/// One budget's figures for [`BudgetMetrics::publish`].
pub struct BudgetFigures {
    pub namespace: String,
    pub budget: String,
    pub amount: f64,
    pub ratio: f64,
    pub not_measured: i64,
    /// (provider type, spent)
    pub spent: Vec<(String, f64)>,
}

impl BudgetMetrics {
    /// Export the figures of every budget of a pass; series of budgets (and providers) no
    /// longer there are removed.
    pub fn publish(&self, all: &[BudgetFigures]) {
        let mut exported = self.exported.lock().unwrap();
        let mut now: HashMap<(String, String), Vec<String>> = HashMap::new();
        for f in all.iter().take(MAX_BUDGET_SERIES) {
            let l = BudgetLabels {
                namespace: f.namespace.clone(),
                budget: f.budget.clone(),
            };
            self.amount.get_or_create(&l).set(f.amount);
            self.ratio.get_or_create(&l).set(f.ratio);
            self.not_measured.get_or_create(&l).set(f.not_measured);
            for (p, s) in &f.spent {
                self.spent
                    .get_or_create(&BudgetProviderLabels {
                        namespace: f.namespace.clone(),
                        budget: f.budget.clone(),
                        provider: p.clone(),
                    })
                    .set(*s);
            }
            now.insert(
                (f.namespace.clone(), f.budget.clone()),
                f.spent.iter().map(|(p, _)| p.clone()).collect(),
            );
        }
        self.dropped
            .set(all.len().saturating_sub(MAX_BUDGET_SERIES) as i64);
        for ((ns, b), providers) in exported.iter() {
            let kept = now.get(&(ns.clone(), b.clone()));
            for p in providers {
                if kept.is_none_or(|k| !k.contains(p)) {
                    self.spent.remove(&BudgetProviderLabels {
                        namespace: ns.clone(),
                        budget: b.clone(),
                        provider: p.clone(),
                    });
                }
            }
            if kept.is_none() {
                let l = BudgetLabels {
                    namespace: ns.clone(),
                    budget: b.clone(),
                };
                self.amount.remove(&l);
                self.ratio.remove(&l);
                self.not_measured.remove(&l);
                self.thresholds.remove(&l);
            }
        }
        *exported = now;
    }

    /// Count a threshold a budget reached.
    pub fn threshold_reached(&self, namespace: &str, budget: &str) {
        self.thresholds
            .get_or_create(&BudgetLabels {
                namespace: namespace.into(),
                budget: budget.into(),
            })
            .inc();
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "keysmith_budget_spent",
            "Spend counted by a KeyBudget or ClusterKeyBudget in its current period, by provider type (in the budget's currency)",
            self.spent.clone(),
        );
        registry.register(
            "keysmith_budget_amount",
            "The amount of a KeyBudget or ClusterKeyBudget per period",
            self.amount.clone(),
        );
        registry.register(
            "keysmith_budget_ratio",
            "Spent / amount of a KeyBudget or ClusterKeyBudget in its current period",
            self.ratio.clone(),
        );
        registry.register(
            "keysmith_budget_keys_not_measured",
            "Keys a budget selects whose provider reports no spend for its period",
            self.not_measured.clone(),
        );
        registry.register(
            "keysmith_budget_thresholds_reached",
            "Thresholds budgets reached (each once per period)",
            self.thresholds.clone(),
        );
        registry.register(
            "keysmith_budget_series_dropped",
            "Budgets not exported as metrics because of the series cap",
            self.dropped.clone(),
        );
    }
}

/// Per-provider sums and minimums over many objects (ApiKeys), kept up to date one object at
/// a time: a change costs O(log N). Issue 11: recomputing the gauges over every ApiKey on each
/// change made a burst of 10,000 creations O(N²) (10⁸ steps, each cloning a string).
#[derive(Default)]
pub struct Tally {
    /// (provider, part) → sum of the objects' amounts.
    sums: HashMap<(String, &'static str), i64>,
    /// A multiset of (provider, value): the smallest value of each provider comes first.
    mins: BTreeMap<(String, i64), u32>,
}

impl Tally {
    /// Put in (`sign` 1) or take out (`sign` -1) one object's contribution: `amount` to the sum
    /// of (`provider`, `part`), and `min` among the provider's values.
    pub fn apply(
        &mut self,
        provider: &str,
        part: &'static str,
        amount: i64,
        min: Option<i64>,
        sign: i64,
    ) {
        let sum = self.sums.entry((provider.to_string(), part)).or_default();
        *sum += sign * amount;
        if *sum == 0 {
            self.sums.remove(&(provider.to_string(), part));
        }
        if let Some(v) = min {
            let k = (provider.to_string(), v);
            if sign > 0 {
                *self.mins.entry(k).or_default() += 1;
            } else if let Some(n) = self.mins.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    self.mins.remove(&k);
                }
            }
        }
    }

    /// The sum of (`provider`, `part`); 0 when no object adds to it.
    pub fn sum(&self, provider: &str, part: &'static str) -> i64 {
        self.sums
            .get(&(provider.to_string(), part))
            .copied()
            .unwrap_or(0)
    }

    /// The smallest value among the provider's objects.
    pub fn min(&self, provider: &str) -> Option<i64> {
        self.mins
            .range((provider.to_string(), i64::MIN)..)
            .next()
            .filter(|((p, _), _)| p == provider)
            .map(|((_, v), _)| *v)
    }
}

/// What one tracked object adds to a [`Tally`].
pub trait Contribution {
    /// The provider it counts under.
    fn provider(&self) -> &str;
    /// Put it in (`sign` 1) or take it out (`sign` -1).
    fn add_to(&self, tally: &mut Tally, sign: i64);
}

/// Per-object states (by `namespace/name`) and the tally they add up to.
pub struct Tracker<T> {
    objects: HashMap<String, T>,
    pub tally: Tally,
}

impl<T> Default for Tracker<T> {
    fn default() -> Self {
        Self {
            objects: HashMap::new(),
            tally: Tally::default(),
        }
    }
}

impl<T: Contribution + Clone + PartialEq> Tracker<T> {
    /// Record `key`'s state (`None`: it is gone). Returns the providers whose figures changed
    /// (none when the state is the one already recorded).
    pub fn update(&mut self, key: &str, state: Option<T>) -> Vec<String> {
        let old = match &state {
            Some(s) => self.objects.insert(key.to_string(), s.clone()),
            None => self.objects.remove(key),
        };
        if old == state {
            return Vec::new();
        }
        let mut touched = Vec::new();
        for (s, sign) in [(old, -1), (state, 1)] {
            if let Some(s) = s {
                s.add_to(&mut self.tally, sign);
                touched.push(s.provider().to_string());
            }
        }
        touched
    }

    /// Objects tracked.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }
}

/// Set a gauge to `v`, or drop its series when `v` is `None` (as if never set).
pub fn set_or_remove<S>(family: &Family<S, Gauge>, labels: &S, v: Option<i64>)
where
    S: Clone + std::hash::Hash + Eq,
{
    match v {
        Some(v) => {
            family.get_or_create(labels).set(v);
        }
        None => {
            family.remove(labels);
        }
    }
}

/// The rotation state of one ApiKey, as the rotation gauges aggregate it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotationTrack {
    pub provider: String,
    /// status.nextRotationAt (Unix seconds).
    pub next_rotation: Option<i64>,
    /// Replaced keys in their grace period (status.previousKeys).
    pub previous_keys: i64,
}

impl Contribution for RotationTrack {
    fn provider(&self) -> &str {
        &self.provider
    }

    fn add_to(&self, tally: &mut Tally, sign: i64) {
        tally.apply(
            &self.provider,
            "previous",
            self.previous_keys,
            self.next_rotation,
            sign,
        );
        tally.apply(&self.provider, "objects", 1, None, sign);
    }
}

/// Everything keysmith exports.
pub struct Metrics {
    pub registry: Registry,
    pub provider: Arc<ProviderMetrics>,
    pub reconcile_total: Family<ReconcileLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_time: Family<ControllerLabels, Histogram>,
    pub apikeys: Family<ReadyLabels, Gauge>,
    /// Soonest expiry among the keys of each provider type (object names are not labels).
    pub key_expiry: Family<ProviderLabel, Gauge>,
    pub orphans_revoked: Family<ProviderLabel, Counter>,
    pub keys_created: Family<ProviderLabel, Counter>,
    pub keys_revoked: Family<ProviderLabel, Counter>,
    pub kube_writes: Family<KubeWriteLabels, Counter>,
    /// Rotations completed, by provider type and trigger.
    pub rotations: Family<RotationLabels, Counter>,
    /// Replaced keys still live in their grace period, per provider type.
    pub previous_keys: Family<ProviderLabel, Gauge>,
    /// Soonest scheduled rotation among the keys of each provider type.
    pub next_rotation: Family<ProviderLabel, Gauge>,
    /// 1 while this replica leads (always, without leader election), else 0.
    pub leader: Gauge,
    rotation_tracked: Mutex<Tracker<RotationTrack>>,
    /// Always 1; the labels say which build this is.
    pub build_info: Family<BuildInfoLabels, Gauge>,
    /// Per-ApiKey series (`--per-key-metrics`); None when off (the default).
    pub per_key: Option<per_key::PerKeyMetrics>,
    /// `keysmith_budget_*`.
    pub budgets: BudgetMetrics,
}

/// `keysmith_build_info` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildInfoLabels {
    pub version: String,
    /// The git commit the release was built from (`KEYSMITH_GIT_COMMIT` at build time), else
    /// `unknown`.
    pub revision: String,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The metrics with per-ApiKey series for at most `max_keys` ApiKeys (`--per-key-metrics`).
    pub fn with_per_key(max_keys: usize) -> Self {
        let mut m = Metrics::new();
        m.per_key = Some(per_key::PerKeyMetrics::new(max_keys, &mut m.registry));
        m
    }

    pub fn new() -> Self {
        let provider = Arc::new(ProviderMetrics::new());
        let mut m = Metrics {
            provider,
            reconcile_total: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_time: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 14))
            }),
            apikeys: Family::default(),
            key_expiry: Family::default(),
            orphans_revoked: Family::default(),
            keys_created: Family::default(),
            keys_revoked: Family::default(),
            kube_writes: Family::default(),
            rotations: Family::default(),
            previous_keys: Family::default(),
            next_rotation: Family::default(),
            leader: Gauge::default(),
            rotation_tracked: Mutex::new(Default::default()),
            build_info: Family::default(),
            per_key: None,
            budgets: BudgetMetrics::default(),
            registry: Registry::default(),
        };
        m.build_info
            .get_or_create(&BuildInfoLabels {
                version: env!("CARGO_PKG_VERSION").into(),
                revision: option_env!("KEYSMITH_GIT_COMMIT")
                    .unwrap_or("unknown")
                    .into(),
            })
            .set(1);
        m.registry.register(
            "keysmith_build_info",
            "Build of this keysmith (always 1; the labels carry the version and git revision)",
            m.build_info.clone(),
        );
        m.provider.register(&mut m.registry);
        m.budgets.register(&mut m.registry);
        m.registry.register(
            "controller_runtime_reconcile",
            "Total number of reconciliations per controller",
            m.reconcile_total.clone(),
        );
        m.registry.register(
            "controller_runtime_reconcile_errors",
            "Total number of reconciliation errors per controller, by condition reason",
            m.reconcile_errors.clone(),
        );
        m.registry.register(
            "controller_runtime_reconcile_time_seconds",
            "Length of time per reconciliation per controller",
            m.reconcile_time.clone(),
        );
        m.registry.register(
            "keysmith_apikeys",
            "ApiKeys by provider and readiness",
            m.apikeys.clone(),
        );
        m.registry.register(
            "keysmith_key_expiry_timestamp_seconds",
            "Soonest expiry among the managed keys of each provider (Unix seconds)",
            m.key_expiry.clone(),
        );
        m.registry.register(
            "keysmith_orphans_revoked",
            "Keys found at a provider after an interrupted create and revoked",
            m.orphans_revoked.clone(),
        );
        m.registry.register(
            "keysmith_keys_created",
            "Keys created at providers",
            m.keys_created.clone(),
        );
        m.registry.register(
            "keysmith_keys_revoked",
            "Keys revoked at providers",
            m.keys_revoked.clone(),
        );
        m.registry.register(
            "keysmith_kubernetes_writes",
            "Writes keysmith made to the Kubernetes API, by resource and verb",
            m.kube_writes.clone(),
        );
        m.registry.register(
            "keysmith_rotations",
            "Key rotations completed, by provider and trigger (Schedule, BeforeExpiry, OnDemand, SourceChanged)",
            m.rotations.clone(),
        );
        m.registry.register(
            "keysmith_previous_keys",
            "Replaced keys still live in their grace period, waiting to be revoked",
            m.previous_keys.clone(),
        );
        m.registry.register(
            "keysmith_next_rotation_timestamp_seconds",
            "Soonest scheduled rotation among the managed keys of each provider (Unix seconds)",
            m.next_rotation.clone(),
        );
        m.registry.register(
            "keysmith_leader",
            "1 while this replica holds the leader Lease and reconciles (always without leader election), else 0",
            m.leader.clone(),
        );
        m
    }

    /// Count one completed rotation.
    pub fn rotated(&self, provider: &str, trigger: &str) {
        self.rotations
            .get_or_create(&RotationLabels {
                provider: provider.into(),
                trigger: trigger.into(),
            })
            .inc();
    }

    /// Record an ApiKey's rotation state (`key`: namespace/name; None: it was deleted) and
    /// refresh `keysmith_previous_keys` and `keysmith_next_rotation_timestamp_seconds`.
    pub fn track_rotation(&self, key: &str, state: Option<RotationTrack>) {
        let mut t = self
            .rotation_tracked
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for provider in t.update(key, state) {
            let labels = ProviderLabel {
                provider: provider.clone(),
            };
            // A provider with tracked ApiKeys shows its sum, 0 included.
            let any = t.tally.sum(&provider, "objects") > 0;
            let previous = t.tally.sum(&provider, "previous");
            set_or_remove(&self.previous_keys, &labels, any.then_some(previous));
            set_or_remove(&self.next_rotation, &labels, t.tally.min(&provider));
        }
    }

    /// Count one write to the Kubernetes API (`resource` e.g. `secrets`, `operation` e.g. `apply`).
    pub fn kube_write(&self, resource: &str, operation: &str) {
        self.kube_writes
            .get_or_create(&KubeWriteLabels {
                resource: resource.into(),
                verb: operation.into(),
            })
            .inc();
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_and_build_info_gauges_are_exported() {
        let m = Metrics::new();
        let text = m.encode();
        assert!(text.contains("keysmith_leader 0\n"), "{text}");
        let info = format!(
            "keysmith_build_info{{version=\"{}\",revision=\"",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&info), "{text}");
        m.leader.set(1);
        assert!(m.encode().contains("keysmith_leader 1\n"));
        m.leader.set(0);
        assert!(m.encode().contains("keysmith_leader 0\n"));
    }

    #[test]
    fn a_tally_follows_objects_in_and_out() {
        let mut t = Tally::default();
        t.apply("openrouter", "ready", 1, Some(300), 1);
        t.apply("openrouter", "ready", 1, Some(100), 1);
        t.apply("openrouter", "ready", 1, Some(100), 1);
        t.apply("boltz", "ready", 1, None, 1);
        assert_eq!(t.sum("openrouter", "ready"), 3);
        assert_eq!(t.min("openrouter"), Some(100));
        assert_eq!(t.min("boltz"), None, "no value: no minimum");
        assert_eq!(t.min("bifrost"), None);
        // One of two equal minimums leaves: the other still counts.
        t.apply("openrouter", "ready", 1, Some(100), -1);
        assert_eq!(t.min("openrouter"), Some(100));
        t.apply("openrouter", "ready", 1, Some(100), -1);
        assert_eq!(t.min("openrouter"), Some(300));
        assert_eq!(t.sum("openrouter", "ready"), 1);
        t.apply("openrouter", "ready", 1, Some(300), -1);
        assert_eq!(
            (t.sum("openrouter", "ready"), t.min("openrouter")),
            (0, None)
        );
        assert!(
            t.sums.len() == 1 && t.mins.is_empty(),
            "emptied entries are dropped"
        );
    }

    #[test]
    fn rotation_metrics_aggregate_per_provider() {
        let m = Metrics::new();
        m.rotated("openrouter", "OnDemand");
        m.rotated("openrouter", "OnDemand");
        m.rotated("boltz", "Schedule");
        let track = |p: &str, next, prev| {
            Some(RotationTrack {
                provider: p.into(),
                next_rotation: next,
                previous_keys: prev,
            })
        };
        m.track_rotation("a/one", track("openrouter", Some(2000), 1));
        m.track_rotation("a/two", track("openrouter", Some(1000), 2));
        m.track_rotation("b/three", track("boltz", None, 0));
        let out = m.encode();
        for want in [
            "keysmith_rotations_total{provider=\"openrouter\",trigger=\"OnDemand\"} 2",
            "keysmith_rotations_total{provider=\"boltz\",trigger=\"Schedule\"} 1",
            "keysmith_previous_keys{provider=\"openrouter\"} 3",
            "keysmith_previous_keys{provider=\"boltz\"} 0",
            "keysmith_next_rotation_timestamp_seconds{provider=\"openrouter\"} 1000",
        ] {
            assert!(out.contains(want), "{want} missing in\n{out}");
        }
        assert!(!out.contains("keysmith_next_rotation_timestamp_seconds{provider=\"boltz\"}"));
        // A deleted ApiKey leaves the aggregates.
        m.track_rotation("a/two", None);
        let out = m.encode();
        assert!(
            out.contains("keysmith_previous_keys{provider=\"openrouter\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("keysmith_next_rotation_timestamp_seconds{provider=\"openrouter\"} 2000"),
            "{out}"
        );
    }
}
