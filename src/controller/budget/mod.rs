//! KeyBudgets and ClusterKeyBudgets: spend across keys and providers, added up by one pass over
//! every budget every [`PASS_INTERVAL`].
//!
//! Where the numbers come from: the operator's own view of each provider, the shared listing
//! of each provider object ([`Context::listing`], one paged listing per refresh interval that
//! the ApiKey reconciles use too), never an ApiKey's `status.usage` (which anyone allowed to
//! write ApiKey status could forge). Which keys: the ApiKeys a budget selects (a KeyBudget: of
//! its own namespace only; a ClusterKeyBudget: of the namespaces its `namespaceSelector`
//! admits), each through the provider object it is allowed to use ([`Context::resolve`]), each
//! key id at most one ApiKey claims (a key id two ApiKeys claim counts for none and is never
//! throttled or disabled: one of them forged it).
//!
//! One pass: list the budgets, page through the served ApiKeys once, take each needed listing
//! once, then per budget add up ([`tally`]), write the status (only when the figures changed,
//! or every few minutes to move `lastRefresh`), tell newly reached thresholds (condition, Event,
//! metric; once per period), and compute the [`enforce::Hold`]s of `Throttle`/`Disable`
//! budgets, which are pushed to the providers and kept for the ApiKey sync
//! ([`super::limits`]). After a restart the first pass recomputes them from the providers'
//! listings and the budgets' status.

pub(crate) mod enforce;
pub(crate) mod tally;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::ResourceExt;
use serde_json::{json, Value};

use self::enforce::{can_disable, can_throttle, GroupHold, Hold, Target};
use self::tally::Measured;
use super::backends::{selector_matches, ResolvedProvider};
use super::context::Context;
use super::inuse::{scan_apikeys, ApiKeyScope};
use super::listing::SnapshotSlot;
use super::reasons::Reason;
use crate::api::{ApiKey, ClusterKeyBudget, KeyBudget, KeyBudgetSpec, KeyBudgetStatus, OnExceeded};
use crate::metrics::BudgetFigures;
use crate::providers::{decimal_from_f64, KeyScope, Limit, ProviderKey};

/// How often the budgets are added up. The spend they read is at most one refresh interval of
/// its provider object old (the shared listing).
pub const PASS_INTERVAL: Duration = Duration::from_secs(30);
/// `status.lastRefresh` alone is rewritten at most this often (a pass that changes no figure
/// writes nothing in between).
const LAST_REFRESH_EVERY: Duration = Duration::from_secs(300);
/// Most budgets one pass adds up (the rest wait for a later pass, in name order).
pub const MAX_BUDGETS: usize = 2000;

/// Set once the operator was refused the listing of ClusterKeyBudgets (warned about once).
static CLUSTER_BUDGETS_REFUSED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// A budget of either kind.
enum Budget {
    Namespaced(KeyBudget),
    Cluster(ClusterKeyBudget),
}

impl Budget {
    fn spec(&self) -> &KeyBudgetSpec {
        match self {
            Budget::Namespaced(b) => &b.spec,
            Budget::Cluster(b) => &b.spec.inner,
        }
    }

    fn status(&self) -> Option<&KeyBudgetStatus> {
        match self {
            Budget::Namespaced(b) => b.status.as_ref(),
            Budget::Cluster(b) => b.status.as_ref(),
        }
    }

    fn name(&self) -> String {
        match self {
            Budget::Namespaced(b) => b.name_any(),
            Budget::Cluster(b) => b.name_any(),
        }
    }

    /// The namespace of a KeyBudget; empty for a ClusterKeyBudget (the metrics' label).
    fn namespace(&self) -> String {
        match self {
            Budget::Namespaced(b) => b.namespace().unwrap_or_default(),
            Budget::Cluster(_) => String::new(),
        }
    }

    fn generation(&self) -> Option<i64> {
        match self {
            Budget::Namespaced(b) => b.metadata.generation,
            Budget::Cluster(b) => b.metadata.generation,
        }
    }

    /// Whether the budget may count ApiKeys of namespace `ns` with labels `labels` (a
    /// KeyBudget: its own namespace only).
    fn selects(&self, ak: &ApiKey, ns_labels: Option<&BTreeMap<String, String>>) -> bool {
        let labels = ak.labels();
        let ns = ak.namespace().unwrap_or_default();
        let by_label = |sel: &Option<LabelSelector>, l: &BTreeMap<String, String>| {
            sel.as_ref()
                .is_none_or(|s| selector_matches(s, l).unwrap_or(false))
        };
        match self {
            Budget::Namespaced(b) => {
                b.namespace().as_deref() == Some(ns.as_str()) && by_label(&b.spec.selector, labels)
            }
            Budget::Cluster(b) => {
                ns_labels.is_some_and(|nl| by_label(&b.spec.namespace_selector, nl))
                    && by_label(&b.spec.inner.selector, labels)
            }
        }
    }

    /// `hold` for the keys this budget selects that it has not measured yet.
    fn group_hold(&self, hold: Hold) -> GroupHold {
        match self {
            Budget::Namespaced(b) => GroupHold {
                namespace: Some(b.namespace().unwrap_or_default()),
                namespace_selector: None,
                selector: b.spec.selector.clone(),
                hold,
            },
            Budget::Cluster(b) => GroupHold {
                namespace: None,
                namespace_selector: b.spec.namespace_selector.clone(),
                selector: b.spec.inner.selector.clone(),
                hold,
            },
        }
    }

    async fn patch_status(&self, ctx: &Context, status: Value) -> Result<(), kube::Error> {
        let body = Patch::Merge(json!({ "status": status }));
        let pp = PatchParams::default();
        match self {
            Budget::Namespaced(b) => {
                Api::<KeyBudget>::namespaced(
                    ctx.client.clone(),
                    &b.namespace().unwrap_or_default(),
                )
                .patch_status(&b.name_any(), &pp, &body)
                .await?;
                ctx.metrics.kube_write("keybudgets/status", "patch");
            }
            Budget::Cluster(b) => {
                Api::<ClusterKeyBudget>::all(ctx.client.clone())
                    .patch_status(&b.name_any(), &pp, &body)
                    .await?;
                ctx.metrics.kube_write("clusterkeybudgets/status", "patch");
            }
        }
        Ok(())
    }

    /// An Event on the budget. `action` tells repeats apart: Events with the same reason and
    /// action are one series (the first note kept), so each threshold has its own.
    async fn event(
        &self,
        ctx: &Context,
        type_: EventType,
        reason: Reason,
        action: &str,
        note: String,
    ) {
        match self {
            Budget::Namespaced(b) => ctx.event(b, type_, reason, action, note).await,
            Budget::Cluster(b) => ctx.event(b, type_, reason, action, note).await,
        }
    }
}

/// A selected ApiKey's key as the operator's own listing shows it.
struct View {
    p: ResolvedProvider,
    scope: KeyScope,
    id: String,
    /// The current key.
    current: ProviderKey,
    /// Replaced keys still live in their grace period (their spend counts too).
    older: Vec<ProviderKey>,
}

/// What one pass did (tests and the performance figures read it).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    pub budgets: usize,
    /// ApiKeys selected by at least one budget.
    pub keys: usize,
    /// Distinct listings (provider object and scope) the pass read.
    pub listings: usize,
    /// Keys whose limit or enabled state the pass changed at the provider.
    pub updates: usize,
    /// Budget statuses written.
    pub status_writes: usize,
}

/// Run a budget pass every [`PASS_INTERVAL`] until `stop`.
pub async fn run(
    ctx: std::sync::Arc<Context>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let mut every = tokio::time::interval(PASS_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let passes = async {
        loop {
            every.tick().await;
            match pass(&ctx).await {
                Ok(r) => tracing::debug!(?r, "budgets added up"),
                Err(e) => tracing::warn!(error = %e, "budget pass failed"),
            }
            // Also after a failure: the ApiKey sync must not wait for budgets forever.
            ctx.budgets.mark_settled();
        }
    };
    tokio::select! {
        _ = passes => {}
        _ = stop => {}
    }
}

/// The budgets this installation serves: KeyBudgets of the served namespaces, and
/// ClusterKeyBudgets in cluster mode. A missing CRD (an older chart) is no budget.
async fn list_budgets(ctx: &Context) -> Result<Vec<Budget>, kube::Error> {
    fn absent(e: &kube::Error) -> bool {
        matches!(e, kube::Error::Api(r) if r.code == 404 || r.code == 403)
    }
    let mut out = Vec::new();
    let lp = ListParams::default().limit(500);
    let apis: Vec<Api<KeyBudget>> = if ctx.settings.watch_namespaces.is_empty() {
        vec![Api::all(ctx.client.clone())]
    } else {
        ctx.settings
            .watch_namespaces
            .iter()
            .map(|ns| Api::namespaced(ctx.client.clone(), ns))
            .collect()
    };
    for api in apis {
        match api.list(&lp).await {
            Ok(l) => out.extend(l.items.into_iter().map(Budget::Namespaced)),
            Err(e) if absent(&e) => {}
            Err(e) => return Err(e),
        }
    }
    // ClusterKeyBudgets: in cluster mode, and in namespace mode when the operator's RBAC lets
    // it list them (then they count the watched namespaces' ApiKeys only). Refused: said once.
    match Api::<ClusterKeyBudget>::all(ctx.client.clone())
        .list(&lp)
        .await
    {
        Ok(l) => out.extend(l.items.into_iter().map(Budget::Cluster)),
        Err(kube::Error::Api(r)) if r.code == 403 => {
            if !CLUSTER_BUDGETS_REFUSED.swap(true, std::sync::atomic::Ordering::SeqCst) {
                tracing::warn!(
                    namespace_mode = !ctx.settings.watch_namespaces.is_empty(),
                    "ClusterKeyBudgets are not served: the operator may not list clusterkeybudgets (in namespace mode, grant it with a ClusterRole for clusterkeybudgets list and clusterkeybudgets/status patch; see docs/budgets.md)"
                );
            }
        }
        Err(e) if absent(&e) => {}
        Err(e) => return Err(e),
    }
    out.retain(|b| match b {
        Budget::Namespaced(b) => b.metadata.deletion_timestamp.is_none(),
        Budget::Cluster(b) => b.metadata.deletion_timestamp.is_none(),
    });
    out.truncate(MAX_BUDGETS);
    Ok(out)
}

/// `namespace/name` of an ApiKey.
fn key_of(ak: &ApiKey) -> String {
    format!("{}/{}", ak.namespace().unwrap_or_default(), ak.name_any())
}

/// Key ids and how many ApiKeys claim each (current, replaced and in-flight keys).
fn claims(all: &[ApiKey]) -> HashMap<&str, u32> {
    let mut c: HashMap<&str, u32> = HashMap::new();
    for ak in all {
        let Some(st) = &ak.status else { continue };
        let ids: HashSet<&str> = st
            .key_id
            .as_deref()
            .into_iter()
            .chain(st.previous_keys.iter().map(|p| p.key_id.as_str()))
            .collect();
        for id in ids {
            *c.entry(id).or_default() += 1;
        }
    }
    c
}

/// The listings one pass reads, each taken (or found fresh) once, and the provider objects
/// its ApiKeys resolve to, each resolved once per namespace and reference.
#[derive(Default)]
struct Listings(
    HashMap<(String, KeyScope), Result<SnapshotSlot, String>>,
    HashMap<String, Result<ResolvedProvider, String>>,
);

impl Listings {
    async fn find(
        &mut self,
        ctx: &Context,
        p: &ResolvedProvider,
        scope: &KeyScope,
        id: &str,
    ) -> Result<Option<ProviderKey>, String> {
        let k = (p.id.clone(), scope.clone());
        if !self.0.contains_key(&k) {
            let got = ctx
                .listings
                .get(p, scope, p.refresh_interval)
                .await
                .map_err(|e| {
                    format!(
                        "its provider's listing failed ({})",
                        super::reasons::Reason::from(&e)
                    )
                });
            self.0.insert(k.clone(), got);
        }
        match &self.0[&k] {
            Ok(slot) => Ok(slot.lock().await.keys.get(id).map(|k| (**k).clone())),
            Err(e) => Err(e.clone()),
        }
    }
}

/// The key of `ak` as the operator's own listing of its provider object shows it.
async fn view(
    ctx: &Context,
    ak: &ApiKey,
    claims: &HashMap<&str, u32>,
    listings: &mut Listings,
) -> Result<View, String> {
    let st = ak.status.clone().unwrap_or_default();
    let Some(id) = st.key_id.clone() else {
        return Err("it has no key yet".into());
    };
    if claims.get(id.as_str()).copied().unwrap_or(0) > 1 {
        return Err("its key id is claimed by another ApiKey too: counted for neither".into());
    }
    // The same checks as the ApiKey's reconcile (tenancy rule 6), once per namespace and
    // provider reference.
    let r = &ak.spec.provider_ref;
    let memo = format!(
        "{}/{:?}/{}",
        ak.namespace().unwrap_or_default(),
        r.kind,
        r.name
    );
    if !listings.1.contains_key(&memo) {
        let got = super::resolve::resolve(ctx, ak).await.map_err(|e| {
            format!(
                "its provider object cannot be used ({})",
                e.reason().as_str()
            )
        });
        listings.1.insert(memo.clone(), got);
    }
    let p = listings.1[&memo].clone()?;
    let settings = super::validate::settings_for(ak, &st)
        .map_err(|_| "its spec does not validate".to_string())?;
    let desired = p.backend.scope(&settings);
    let scope = super::apikey::key_scope(&st, &desired);
    let current = listings
        .find(ctx, &p, &scope, &id)
        .await?
        .filter(|k| k.active)
        .ok_or_else(|| "its key is not in its provider's listing (yet)".to_string())?;
    let mut older = Vec::new();
    for prev in &st.previous_keys {
        if claims.get(prev.key_id.as_str()).copied().unwrap_or(0) > 1 {
            continue;
        }
        let at = super::apikey::scope_at(prev.scope.as_ref(), &scope);
        if let Ok(Some(k)) = listings.find(ctx, &p, &at, &prev.key_id).await {
            older.push(k);
        }
    }
    Ok(View {
        p,
        scope,
        id,
        current,
        older,
    })
}

/// What a key (all its live generations) spent in the budget's period.
fn spent(v: &View, spec: &KeyBudgetSpec) -> Result<f64, String> {
    let currency = spec.currency();
    let mut total = 0.0;
    for k in std::iter::once(&v.current).chain(&v.older) {
        total += tally::period_spend(k.usage.as_ref(), spec.period, &currency)?;
    }
    Ok(total)
}

/// One pass over every budget (see the module documentation).
pub async fn pass(ctx: &Context) -> Result<PassReport, kube::Error> {
    pass_over(ctx, &|_, _| true).await
}

/// A pass over the budgets `keep(namespace, name)` admits (a ClusterKeyBudget's namespace is
/// `None`): tests sharing one API server add up only their own.
pub async fn pass_over(
    ctx: &Context,
    keep: &(dyn Fn(Option<&str>, &str) -> bool + Sync),
) -> Result<PassReport, kube::Error> {
    pass_over_at(ctx, keep, Utc::now()).await
}

/// [`pass_over`] as if the clock read `now`: which period the budgets are in (a test drives a
/// period reset without waiting for midnight or the 1st).
pub async fn pass_over_at(
    ctx: &Context,
    keep: &(dyn Fn(Option<&str>, &str) -> bool + Sync),
    now: DateTime<Utc>,
) -> Result<PassReport, kube::Error> {
    let mut budgets = list_budgets(ctx).await?;
    budgets.retain(|b| match b {
        Budget::Namespaced(k) => keep(k.namespace().as_deref(), &k.name_any()),
        Budget::Cluster(k) => keep(None, &k.name_any()),
    });
    let mut report = PassReport {
        budgets: budgets.len(),
        ..Default::default()
    };
    let mut all: Vec<ApiKey> = Vec::new();
    if !budgets.is_empty() || ctx.budgets.held() > 0 {
        scan_apikeys(&ctx.client, &ctx.settings, ApiKeyScope::Served, |page| {
            all.extend(
                page.iter()
                    .filter(|a| a.metadata.deletion_timestamp.is_none())
                    .cloned(),
            );
            false
        })
        .await?;
    }
    let claims = claims(&all);

    // Which ApiKeys each budget selects.
    let mut ns_labels: HashMap<String, Option<BTreeMap<String, String>>> = HashMap::new();
    let mut selected: Vec<Vec<usize>> = Vec::with_capacity(budgets.len());
    for b in &budgets {
        let mut sel = Vec::new();
        for (i, ak) in all.iter().enumerate() {
            let labels = if matches!(b, Budget::Cluster(_)) {
                let ns = ak.namespace().unwrap_or_default();
                if !ns_labels.contains_key(&ns) {
                    let l = super::resolve::namespace_labels(ctx, &ns).await.ok();
                    ns_labels.insert(ns.clone(), l);
                }
                ns_labels[&ns].as_ref()
            } else {
                None
            };
            if b.selects(ak, labels) {
                sel.push(i);
            }
        }
        selected.push(sel);
    }

    // Each selected ApiKey's key, from the shared listings (one per provider object and scope).
    let mut listings = Listings::default();
    let mut views: HashMap<usize, Result<View, String>> = HashMap::new();
    let previously_held: HashSet<String> = ctx.budgets.keys().into_iter().collect();
    let wanted_views: HashSet<usize> = selected
        .iter()
        .flatten()
        .copied()
        .chain(
            all.iter()
                .enumerate()
                .filter(|(_, ak)| previously_held.contains(&key_of(ak)))
                .map(|(i, _)| i),
        )
        .collect();
    for i in wanted_views {
        let v = view(ctx, &all[i], &claims, &mut listings).await;
        views.insert(i, v);
    }
    report.keys = selected.iter().flatten().collect::<HashSet<_>>().len();
    report.listings = listings.0.len();

    // Per budget: figures, status, thresholds, holds.
    let mut holds: HashMap<String, Hold> = HashMap::new();
    let mut groups: Vec<GroupHold> = Vec::new();
    // Keys a Throttle/Disable budget selects but could not measure this pass.
    let mut unmeasured: HashSet<String> = HashSet::new();
    let mut figures = Vec::new();
    for (b, sel) in budgets.iter().zip(&selected) {
        let spec = b.spec();
        let amount = tally::amount(&spec.amount).unwrap_or(0.0);
        let measured: Vec<Measured> = sel
            .iter()
            .map(|i| {
                let ak = &all[*i];
                let v = &views[i];
                Measured {
                    namespace: ak.namespace().unwrap_or_default(),
                    name: ak.name_any(),
                    provider: v
                        .as_ref()
                        .map(|v| v.p.provider_type.as_str().to_string())
                        .unwrap_or_else(|_| "unknown".into()),
                    spent: v
                        .as_ref()
                        .map_err(Clone::clone)
                        .and_then(|v| spent(v, spec)),
                }
            })
            .collect();
        let fig = tally::tally(amount, &measured);
        let (enforcement, budget_holds) = plan(spec, amount, &fig, sel, &all, &views);
        for (k, h) in budget_holds {
            holds.entry(k).and_modify(|e| e.merge(&h)).or_insert(h);
        }
        if let Some(hold) = new_key_hold(spec, amount, &fig) {
            groups.push(b.group_hold(hold));
            unmeasured.extend(
                sel.iter()
                    .filter(|i| views[i].is_err())
                    .map(|i| key_of(&all[*i])),
            );
        }
        match write_status(ctx, b, &fig, amount, enforcement, now).await {
            Ok(true) => report.status_writes += 1,
            Ok(false) => {}
            // A status the operator may not write (a ClusterKeyBudget in namespace mode with
            // list but not status rights) does not stop the other budgets.
            Err(kube::Error::Api(r)) if r.code == 403 => {
                tracing::warn!(budget = %b.name(), "a budget's status cannot be written (403): its figures are not reported");
            }
            Err(e) => return Err(e),
        }
        figures.push(BudgetFigures {
            namespace: b.namespace(),
            budget: b.name(),
            amount,
            ratio: fig.ratio,
            not_measured: fig.not_measured_count,
            spent: fig
                .by_provider
                .iter()
                .map(|p| (p.name.clone(), tally::amount(&p.spent).unwrap_or(0.0)))
                .collect(),
        });
    }
    ctx.metrics.budgets.publish(&figures);

    // A key not measured this pass (just created, not in the listing yet) keeps what it was held
    // to: it is not let go to its spec's limit because a listing does not show it yet.
    for k in unmeasured {
        if let Some(h) = ctx.budgets.hold_for(&k) {
            holds.entry(k).or_insert(h);
        }
    }
    ctx.budgets.replace_groups(groups);
    // Push the holds (and lift the ones that ended) where the provider shows otherwise.
    let before = ctx.budgets.replace(holds);
    let touched: HashSet<String> = before.into_keys().chain(ctx.budgets.keys()).collect();
    for (i, v) in &views {
        let ak = &all[*i];
        if !touched.contains(&key_of(ak)) {
            continue;
        }
        let Ok(v) = v else { continue };
        let t = Target {
            ak,
            p: &v.p,
            scope: &v.scope,
            id: &v.id,
            current: &v.current,
        };
        match enforce::apply(ctx, &t).await {
            Ok(true) => report.updates += 1,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(apikey = %key_of(ak), error = %e, "a budget could not change a key at its provider")
            }
        }
    }
    ctx.budgets.mark_settled();
    Ok(report)
}

/// What a key the budget selects gets when it is created before the next pass measures it:
/// `Throttle`: limit 0 over the budget's period (the shares of the keys measured add up to the
/// amount; the next pass gives the new key its share); `Disable` at the cap: disabled.
fn new_key_hold(spec: &KeyBudgetSpec, amount: f64, fig: &tally::Figures) -> Option<Hold> {
    match spec.on_exceeded {
        OnExceeded::Report => None,
        OnExceeded::Throttle => Some(Hold {
            limit: Some(Limit {
                amount: "0".into(),
                reset: Some(tally::reset_of(spec.period)),
            }),
            disabled: false,
        }),
        OnExceeded::Disable => (amount <= 0.0 || fig.spent + 1e-9 >= amount).then_some(Hold {
            limit: None,
            disabled: true,
        }),
    }
}

/// What `onExceeded` does for one budget: a note for its status and the holds on its keys.
fn plan(
    spec: &KeyBudgetSpec,
    amount: f64,
    fig: &tally::Figures,
    sel: &[usize],
    all: &[ApiKey],
    views: &HashMap<usize, Result<View, String>>,
) -> (Option<String>, Vec<(String, Hold)>) {
    let mut holds = Vec::new();
    let mut cannot: Vec<String> = Vec::new();
    let reset = tally::reset_of(spec.period);
    match spec.on_exceeded {
        OnExceeded::Report => (None, holds),
        OnExceeded::Throttle => {
            let mut keys = Vec::new();
            for i in sel {
                let ak = &all[*i];
                match &views[i] {
                    Ok(v) if can_throttle(v.p.backend.capabilities()) => {
                        // The provider's limit applies to the current key alone.
                        match tally::period_spend(
                            v.current.usage.as_ref(),
                            spec.period,
                            &spec.currency(),
                        ) {
                            Ok(s) => keys.push((key_of(ak), s)),
                            Err(_) => cannot.push(format!("{} (no spend reported)", key_of(ak))),
                        }
                    }
                    Ok(v) => cannot.push(format!(
                        "{} ({} cannot change a key's limit in place)",
                        key_of(ak),
                        v.p.provider_type
                    )),
                    Err(_) => cannot.push(format!("{} (not measured)", key_of(ak))),
                }
            }
            let spent: Vec<f64> = keys.iter().map(|(_, s)| *s).collect();
            let caps = tally::throttle_caps(fig.remaining, &spent);
            for ((k, _), cap) in keys.iter().zip(caps) {
                holds.push((
                    k.clone(),
                    Hold {
                        limit: Some(Limit {
                            amount: decimal_from_f64(cap),
                            reset: Some(reset),
                        }),
                        disabled: false,
                    },
                ));
            }
            let note = format!(
                "Throttle: {} keys limited to their spend plus an equal share of {} {} left",
                holds.len(),
                decimal_from_f64(fig.remaining),
                spec.currency()
            );
            (Some(with_cannot(note, &cannot)), holds)
        }
        OnExceeded::Disable => {
            let exceeded = amount <= 0.0 || fig.spent + 1e-9 >= amount;
            if !exceeded {
                return (
                    Some("Disable: under the amount, no key disabled".into()),
                    holds,
                );
            }
            for i in sel {
                let ak = &all[*i];
                match &views[i] {
                    Ok(v) if can_disable(v.p.backend.capabilities()) => holds.push((
                        key_of(ak),
                        Hold {
                            limit: None,
                            disabled: true,
                        },
                    )),
                    Ok(v) => cannot.push(format!(
                        "{} ({} cannot disable a key)",
                        key_of(ak),
                        v.p.provider_type
                    )),
                    Err(_) => cannot.push(format!("{} (not measured)", key_of(ak))),
                }
            }
            let note = format!(
                "Disable: {} keys disabled until the period ends",
                holds.len()
            );
            (Some(with_cannot(note, &cannot)), holds)
        }
    }
}

/// `note`, then the keys that cannot be acted on, bounded to the status field's 1024 characters.
fn with_cannot(note: String, cannot: &[String]) -> String {
    if cannot.is_empty() {
        return note;
    }
    let mut s = format!("{note}; cannot act on {}: ", cannot.len());
    for (i, c) in cannot.iter().enumerate() {
        let part = if i == 0 { c.clone() } else { format!(", {c}") };
        if s.len() + part.len() > 1000 {
            s.push_str(", …");
            break;
        }
        s.push_str(&part);
    }
    s
}

/// Set condition `type_` (the transition time kept while its status stays the same).
fn set_condition(
    conds: &mut Vec<Condition>,
    type_: &str,
    ok: bool,
    reason: Reason,
    message: String,
    generation: Option<i64>,
) {
    let status = if ok { "True" } else { "False" };
    let prev = conds.iter().find(|c| c.type_ == type_).cloned();
    let transition = match &prev {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Time(k8s_openapi::jiff::Timestamp::now()),
    };
    conds.retain(|c| c.type_ != type_);
    conds.push(Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.as_str().into(),
        message,
        observed_generation: generation,
        last_transition_time: transition,
    });
}

/// Write a budget's status if its figures changed (or `lastRefresh` is old), and tell the
/// thresholds reached for the first time in this period. Returns whether it wrote.
async fn write_status(
    ctx: &Context,
    b: &Budget,
    fig: &tally::Figures,
    amount: f64,
    enforcement: Option<String>,
    now: DateTime<Utc>,
) -> Result<bool, kube::Error> {
    let spec = b.spec();
    let old = b.status().cloned().unwrap_or_default();
    let (start, end) = super::period::Period::from(spec.period).bounds(now);
    let start_s = super::time::ts(start);
    let same_period = old.period_start.as_deref() == Some(start_s.as_str());
    let before: Vec<f64> = if same_period {
        old.thresholds_reached.clone()
    } else {
        Vec::new()
    };
    let thresholds = spec.thresholds();
    let reached_now = tally::reached(&thresholds, fig.ratio);
    let newly = tally::newly_reached(&before, &reached_now);
    let mut reached: Vec<f64> = before.iter().chain(&newly).copied().collect();
    reached.sort_by(f64::total_cmp);
    reached.dedup();
    reached.truncate(crate::api::MAX_THRESHOLDS);
    let currency = spec.currency();

    let mut st = KeyBudgetStatus {
        observed_generation: b.generation(),
        period_start: Some(start_s),
        period_end: Some(super::time::ts(end)),
        unit: Some(currency.clone()),
        spent: Some(decimal_from_f64(fig.spent)),
        remaining: Some(decimal_from_f64(fig.remaining)),
        percent: Some(format!("{:.0}%", (fig.ratio * 100.0).min(1e6))),
        by_provider: fig.by_provider.clone(),
        by_namespace: fig.by_namespace.clone(),
        keys_counted: fig.counted,
        keys_not_measured: fig.not_measured_count,
        not_measured: fig.not_measured.clone(),
        thresholds_reached: reached.clone(),
        enforcement,
        last_refresh: old.last_refresh.clone(),
        conditions: old.conditions.clone(),
    };
    let gen = b.generation();
    set_condition(
        &mut st.conditions,
        "Ready",
        true,
        Reason::BudgetCounted,
        format!(
            "{} keys counted, {} not measured",
            fig.counted, fig.not_measured_count
        ),
        gen,
    );
    // Thresholds no longer in the spec lose their condition.
    let types: Vec<String> = thresholds
        .iter()
        .map(|t| tally::threshold_condition(*t))
        .collect();
    st.conditions
        .retain(|c| !c.type_.starts_with("Threshold") || types.contains(&c.type_));
    for t in &thresholds {
        let hit = reached.iter().any(|r| (r - t).abs() < 1e-9);
        let (reason, msg) = if hit {
            (
                Reason::BudgetThresholdReached,
                format!(
                    "{}% of {} {} reached this period",
                    decimal_from_f64(t * 100.0),
                    spec.amount,
                    currency
                ),
            )
        } else if !same_period && old.period_start.is_some() {
            (Reason::BudgetPeriodReset, "a new period began".to_string())
        } else {
            (Reason::BudgetCounted, "not reached this period".to_string())
        };
        set_condition(
            &mut st.conditions,
            &tally::threshold_condition(*t),
            hit,
            reason,
            msg,
            gen,
        );
    }
    let exceeded = amount <= 0.0 || fig.spent + 1e-9 >= amount;
    set_condition(
        &mut st.conditions,
        "Exceeded",
        exceeded,
        if exceeded {
            Reason::BudgetExceeded
        } else {
            Reason::BudgetCounted
        },
        format!(
            "{} of {} {} spent this period",
            decimal_from_f64(fig.spent),
            spec.amount,
            currency
        ),
        gen,
    );

    let stale = old
        .last_refresh
        .as_deref()
        .and_then(super::time::parse)
        .is_none_or(|t| (now - t).to_std().unwrap_or_default() >= LAST_REFRESH_EVERY);
    let mut compare = old.clone();
    compare.last_refresh = st.last_refresh.clone();
    if compare == st && !stale {
        return Ok(false);
    }
    st.last_refresh = Some(super::time::ts(now));
    let mut v = serde_json::to_value(&st).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        // A merge patch keeps what it does not name: absent fields are written as null.
        for k in [
            "byProvider",
            "byNamespace",
            "notMeasured",
            "thresholdsReached",
            "enforcement",
        ] {
            m.entry(k).or_insert(Value::Null);
        }
    }
    // Status first: a crash between the two tells a threshold at most not at all, never twice.
    b.patch_status(ctx, v).await?;
    if !same_period && old.period_start.is_some() {
        b.event(
            ctx,
            EventType::Normal,
            Reason::BudgetPeriodReset,
            "PeriodReset",
            format!("a new {} period began", spec.period.as_str()),
        )
        .await;
    }
    for t in &newly {
        ctx.metrics
            .budgets
            .threshold_reached(&b.namespace(), &b.name());
        let type_ = if *t >= 1.0 {
            EventType::Warning
        } else {
            EventType::Normal
        };
        b.event(
            ctx,
            type_,
            Reason::BudgetThresholdReached,
            &tally::threshold_condition(*t),
            format!(
                "{}% of the {} budget reached: {} of {} {} spent",
                decimal_from_f64(t * 100.0),
                spec.period.as_str(),
                decimal_from_f64(fig.spent),
                spec.amount,
                currency
            ),
        )
        .await;
    }
    Ok(true)
}
