//! Finishing a create that was interrupted (see the module doc of `apikey`): the key whose
//! value reached the Secret is kept, every other key of the attempt revoked.

use std::time::Duration;

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::events::EventType;
use kube::ResourceExt;

use super::super::context::Context;
use super::super::reasons::Reason;
use super::super::secret::{self, SecretOwnership};
use super::revoke::{retire_previous, revoke_quietly};
use super::status::ServerCopy;
use super::status::{key_scope, location, scope_at, ts};
use super::validate::settings_for;
use super::{Failure, Reconciler};
use crate::api::{ApiKey, ApiKeyStatus, PendingCreate};
use crate::providers::{KeyScope, ProviderKey};

/// Keys of an attempt are looked for from this long before it started (clock skew).
const SKEW: chrono::Duration = chrono::Duration::minutes(5);

/// When the attempt started; now if the recorded time cannot be read.
fn started(pending: &PendingCreate) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(&pending.started_at)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|_| Utc::now())
}

/// The earliest creation time, in the provider's clock, of a key the attempt may have made:
/// its start less [`SKEW`], moved by the provider's clock offset where the HTTP layer measured
/// one (its `Date` headers): a provider clock minutes off no longer hides the attempt's key.
pub fn created_since(pending: &PendingCreate, offset: Option<chrono::Duration>) -> DateTime<Utc> {
    started(pending) - SKEW + offset.unwrap_or_else(chrono::Duration::zero)
}

/// The keys an ApiKey's status accounts for: current, replaced, and a rotation's new key (what
/// recovery keeps of its own, and what [`Others`] counts of everyone else's).
fn held_by(st: &ApiKeyStatus) -> impl Iterator<Item = &String> {
    st.key_id
        .iter()
        .chain(st.previous_keys.iter().map(|p| &p.key_id))
        .chain(
            st.rotation
                .as_ref()
                .and_then(|r| r.in_progress.as_ref())
                .map(|r| &r.key_id),
        )
}

/// The listed keys that the interrupted attempt created and nobody holds: active, of the
/// attempt's name, of its attempt id where the provider records one, neither the current key
/// nor the one the Secret holds, and created since `since` unless provably the attempt's (its
/// provisional name or its attempt id prove it whatever the clocks say).
pub fn orphans_of_attempt<'a>(
    keys: impl IntoIterator<Item = &'a ProviderKey>,
    pending: &PendingCreate,
    since: DateTime<Utc>,
    keep: &[Option<&String>],
) -> Vec<String> {
    let provisional = super::create::is_provisional(pending);
    keys.into_iter()
        .filter(|k| k.active && k.name == pending.name)
        .filter(|k| !keep.contains(&Some(&k.id)))
        .filter(|k| k.attempt.as_ref().is_none_or(|a| a == &pending.attempt))
        .filter(|k| provisional || k.attempt.is_some() || k.created_at.is_none_or(|c| c >= since))
        .map(|k| k.id.clone())
        .collect()
}

/// Deletion with `deletionPolicy: Orphan` leaves the current key (the one the Secret holds) at
/// the provider, but not the keys the ApiKey still had to get rid of: an interrupted create's
/// stray key and replaced keys (`previousKeys`) are revoked first; the provider is only asked
/// when there are such keys.
pub async fn revoke_leftovers(
    ak: &ApiKey,
    ctx: &Context,
    st: &mut ApiKeyStatus,
) -> Result<(), Failure> {
    if st.pending_create.is_none() && st.previous_keys.is_empty() {
        return Ok(());
    }
    revoke_accounted(ak, ctx, st, false).await
}

/// Revoke the keys the ApiKey accounts for before it goes: an interrupted create's stray key,
/// the replaced keys (whatever their grace period) and, with `and_current`
/// (`deletionPolicy: Delete`), the current one.
pub async fn revoke_accounted(
    ak: &ApiKey,
    ctx: &Context,
    st: &mut ApiKeyStatus,
    and_current: bool,
) -> Result<(), Failure> {
    let p = ctx.resolve(ak).await?;
    let seen = ServerCopy::of(ak);
    let r = Reconciler {
        ak,
        ctx,
        p: &p,
        seen: &seen,
    };
    let settings = settings_for(ak, st)?;
    let scope = p.backend.scope(&settings);
    if let Some(pending) = st.pending_create.clone() {
        let existing =
            Api::<Secret>::namespaced(ctx.client.clone(), &ak.namespace().unwrap_or_default())
                .get_opt(&ak.secret_name())
                .await?;
        recover(&r, st, &scope, &pending, existing.as_ref()).await?;
    }
    let now = super::status::now_rfc3339();
    for prev in &mut st.previous_keys {
        prev.delete_after = now.clone();
    }
    retire_previous(&r, st, &scope).await?;
    if let Some(id) = st.key_id.clone().filter(|_| and_current) {
        revoke_quietly(ctx, &p, &key_scope(st, &scope), &id).await?;
        let note = format!("revoked key {id} at {}", p.provider_type);
        r.event(EventType::Normal, Reason::KeyRevoked, "Delete", note)
            .await;
    }
    Ok(())
}

/// Split the candidates of an attempt into those it provably created and those it must leave
/// alone: a key carrying this attempt's id is this attempt's; one without is spared when
/// another ApiKey holds it or creates a key of the same name right now, or when `others` is a
/// partial view (namespace mode: an unwatched namespace's ApiKey may hold it).
pub fn provably_mine(
    candidates: Vec<String>,
    pending: &PendingCreate,
    others: &Others,
    attempt_of: impl Fn(&str) -> Option<String>,
) -> (Vec<String>, Vec<String>) {
    candidates.into_iter().partition(|id| {
        if attempt_of(id).as_deref() == Some(pending.attempt.as_str()) {
            return !others.keys.contains(id);
        }
        !others.partial
            && !others.keys.contains(id)
            && !others.pending_names.contains(&pending.name)
    })
}

/// The key id a Secret of ours claims to hold a value for, if it is not the current key (the
/// create answered and the value was delivered, but the status never recorded it).
///
/// A claim only: every mark on the Secret (the managed-by label, the owner annotation, the
/// key-id annotation) can be written by anyone who can write Secrets in the namespace. Recovery
/// keeps the claimed key only once the provider's listing proves the attempt created it
/// ([`proves_delivery`]); otherwise a tenant could write another tenant's key id there and
/// have keysmith take that key over (issue 17).
pub fn claimed_key(ak: &ApiKey, existing: Option<&Secret>, st: &ApiKeyStatus) -> Option<String> {
    existing
        .filter(|s| secret::ownership(ak, s) == SecretOwnership::Ours)
        .filter(|s| secret::value_of(ak, s).is_some())
        .and_then(secret::key_id_of)
        .filter(|id| Some(id) != st.key_id.as_ref())
        .filter(|id| !st.previous_keys.iter().any(|p| &p.key_id == id))
}

/// How a listed key is tied to an interrupted attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tie {
    /// Provably the attempt's: it carries the attempt id, or the attempt's provisional name
    /// (random, chosen by keysmith, never a tenant's to choose or foresee).
    Proven,
    /// Possibly the attempt's: its name is the one the attempt gives its key (the provisional
    /// name, once renamed, or the display name at providers that rename nothing), it is active
    /// and was created since the attempt started. Only [`provably_mine`] with the other
    /// ApiKeys' view settles it.
    ByName,
    /// Not the attempt's.
    None,
}

/// How `k` is tied to the attempt `pending` whose key is to be called `final_name` once
/// renamed. `since`: the attempt's start less the clock skew allowed, in the provider's clock.
pub fn tie(
    k: &ProviderKey,
    pending: &PendingCreate,
    final_name: &str,
    since: DateTime<Utc>,
) -> Tie {
    if !k.active {
        return Tie::None;
    }
    if let Some(a) = &k.attempt {
        return if a == &pending.attempt {
            Tie::Proven
        } else {
            Tie::None
        };
    }
    let provisional = super::create::is_provisional(pending);
    if provisional && k.name == pending.name {
        return Tie::Proven;
    }
    let named = if provisional {
        k.name == final_name
    } else {
        k.name == pending.name
    };
    if named && k.created_at.is_none_or(|c| c >= since) {
        Tie::ByName
    } else {
        Tie::None
    }
}

/// Whether the provider's listing proves that the key the Secret claims (`claimed`) is the one
/// the interrupted attempt created and delivered: listed, active, and tied to the attempt;
/// a key tied by name only must also be held by no other ApiKey, nor possibly be another's
/// create in flight under the same name (`others`, read only when needed).
pub fn proves_delivery(
    claimed: &str,
    tie: Tie,
    pending: &PendingCreate,
    others: Option<&Others>,
) -> bool {
    match tie {
        Tie::Proven => others.is_none_or(|o| !o.keys.contains(claimed)),
        // A partial view (namespace mode) cannot show that no unwatched ApiKey holds it.
        Tie::ByName => others.is_some_and(|o| {
            !o.partial && !o.keys.contains(claimed) && !o.pending_names.contains(&pending.name)
        }),
        Tie::None => false,
    }
}

/// When an interrupted create can no longer reach the provider: a request sent just before the
/// process died can be handled after a listing; only once the client timeout (plus a margin)
/// has passed is the attempt concluded.
pub fn settles_at(pending: &PendingCreate, client_timeout: Duration) -> DateTime<Utc> {
    started(pending)
        + chrono::Duration::from_std(client_timeout + Duration::from_secs(5)).unwrap_or_default()
}

/// What other ApiKeys account for at the same kind of provider: keys they hold (status keyID,
/// previousKeys, a rotation in flight) and names under which they are creating a key now.
/// `partial`: read in namespace mode without a grant to list ApiKeys cluster-wide, so ApiKeys of
/// namespaces this installation does not watch are not in it (they may hold any key).
#[derive(Debug, Default)]
pub struct Others {
    pub keys: HashSet<String>,
    pub pending_names: HashSet<String>,
    pub partial: bool,
}

impl Others {
    /// Read every ApiKey (all namespaces) but `ak`: a consistent list, made only when a key is
    /// adopted or an interrupted create recovered, never in steady state. In namespace mode the
    /// cluster-wide list is tried (an admin may grant it); refused, the watched namespaces are
    /// read and the result is `partial`.
    pub async fn read(ctx: &Context, ak: &ApiKey, provider_type: &str) -> Result<Self, Failure> {
        use super::super::inuse::{scan_apikeys, ApiKeyScope};
        let mut out = Others::default();
        let mut add = |page: &[ApiKey]| {
            let part = Self::of(page.iter(), ak, provider_type);
            out.keys.extend(part.keys);
            out.pending_names.extend(part.pending_names);
            false
        };
        match scan_apikeys(ctx, ApiKeyScope::Cluster, &mut add).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 403 && !ctx.watch_namespaces.is_empty() => {
                scan_apikeys(ctx, ApiKeyScope::Served, &mut add).await?;
                out.partial = true;
            }
            Err(e) => return Err(e.into()),
        }
        Ok(out)
    }

    /// The keys and pending names of `all` but `ak`, at providers of type `provider_type` (or
    /// of an unknown type: counted, to be safe).
    pub fn of<'a>(all: impl Iterator<Item = &'a ApiKey>, ak: &ApiKey, provider_type: &str) -> Self {
        let mut out = Others::default();
        for other in all {
            if other.uid().is_some() && other.uid() == ak.uid() {
                continue;
            }
            let Some(st) = &other.status else { continue };
            if st
                .provider_type
                .as_deref()
                .is_some_and(|t| t != provider_type)
            {
                continue;
            }
            out.keys.extend(held_by(st).cloned());
            if let Some(p) = &st.pending_create {
                out.pending_names.insert(p.name.clone());
            }
        }
        out
    }
}

/// Finish an interrupted create. `scope`: where the attempt created its key, if the marker
/// does not say (a marker written before keysmith recorded it).
///
/// Only keys this attempt provably created are revoked: of its provisional name (the attempt id,
/// see `create::provisional_name`) or of its attempt id where the provider stores one;
/// otherwise (Boltz, whose keys cannot be renamed, and markers written before provisional
/// names) of its name, created since it started, and neither held by another ApiKey nor
/// possibly the key of another ApiKey's create in flight under the same name.
pub async fn recover(
    r: &Reconciler<'_>,
    st: &mut ApiKeyStatus,
    scope: &KeyScope,
    pending: &PendingCreate,
    existing: Option<&Secret>,
) -> Result<(), Failure> {
    // Where the attempt created its key: the marker says, whatever the spec says now.
    let scope = &scope_at(pending.scope.as_ref(), scope);
    let claimed = claimed_key(r.ak, existing, st);
    // The name the attempt's key has once renamed (provisional creates): the display name.
    let final_name = settings_for(r.ak, st).map(|s| s.name).unwrap_or_default();
    let created_since = created_since(pending, r.p.backend.clock_offset());
    // A listing begun after the interrupted create: once the attempt settled, one listing
    // serves every recovery of that time (issue 11); before that, a fresh one.
    let since = settles_at(pending, r.ctx.client_options.timeout).min(Utc::now());
    let slot = r.ctx.listing_since(r.p, scope, since).await?;
    // What the listing says, read under its lock once (no copy of the listing is made).
    let (candidates, claim_tie, attempts) = {
        let snap = slot.lock().await;
        let claim_tie = claimed
            .as_ref()
            .and_then(|id| snap.keys.get(id))
            .map_or(Tie::None, |k| tie(k, pending, &final_name, created_since));
        let mut keep: Vec<String> = held_by(st).cloned().collect();
        keep.extend(claimed.clone().filter(|_| claim_tie != Tie::None));
        let keep: Vec<Option<&String>> = keep.iter().map(Some).collect();
        let candidates = orphans_of_attempt(
            snap.keys.values().map(|k| &**k),
            pending,
            created_since,
            &keep,
        );
        let attempts: Vec<(String, Option<String>)> = candidates
            .iter()
            .map(|id| {
                let a = snap.keys.get(id).and_then(|k| k.attempt.clone());
                (id.clone(), a)
            })
            .collect();
        (candidates, claim_tie, attempts)
    };
    // The other ApiKeys' view, read only when a key is tied to the attempt by its name alone.
    let provable_by_name = !candidates.is_empty() && !super::create::is_provisional(pending);
    let others = if provable_by_name || claim_tie == Tie::ByName {
        Some(Others::read(r.ctx, r.ak, r.p.provider_type.as_str()).await?)
    } else {
        None
    };
    let delivered = claimed
        .clone()
        .filter(|id| proves_delivery(id, claim_tie, pending, others.as_ref()));
    if claimed.is_some() && delivered.is_none() {
        r.event(EventType::Warning, Reason::RecoveringCreate, "Recover", "the Secret names a key (annotation keysmith.dev/key-id) that the provider's listing does not show this ApiKey's interrupted create made: the annotation is ignored, and no key is taken on the Secret's word".to_string()).await;
    }
    let candidates = match &others {
        // A key of the attempt's provisional name or attempt id can only be the attempt's own:
        // no ApiKey can be named so (validate), and the attempt id is random.
        Some(others) if provable_by_name => {
            let (mine, spared) = provably_mine(candidates, pending, others, |id| {
                attempts
                    .iter()
                    .find(|(k, _)| k == id)
                    .and_then(|(_, a)| a.clone())
            });
            for id in spared {
                r.event(EventType::Warning, Reason::RecoveringCreate, "Recover", format!("left key {id} alone: it has the interrupted attempt's name, but another ApiKey holds it or is creating a key under that name")).await;
            }
            mine
        }
        _ => candidates,
    };
    for id in candidates {
        revoke_quietly(r.ctx, r.p, scope, &id).await?;
        r.ctx
            .metrics
            .orphans_revoked
            .get_or_create(&r.label())
            .inc();
        r.event(EventType::Warning, Reason::OrphanRevoked, "Recover", format!("revoked key {id}: created by an interrupted attempt whose value never reached the Secret")).await;
    }
    if let Some(new) = delivered {
        // The Secret already holds the new key: keep it; a key it superseded is revoked.
        if super::rotate::in_flight(st) {
            // An interrupted rotation: the replaced key keeps its grace period.
            let prev = super::rotate::recovered(r, st, &new)?;
            st.previous_keys.extend(prev);
            st.key_id = None;
        } else if let Some(old) = st.key_id.take() {
            let old_scope = key_scope(st, scope);
            if let Err(e) = revoke_quietly(r.ctx, r.p, &old_scope, &old).await {
                st.key_id = Some(old);
                return Err(e.into());
            }
        }
        st.key_id = Some(new);
        st.key_scope = location(scope);
    } else {
        let settle = settles_at(pending, r.ctx.client_options.timeout);
        if let Ok(wait) = (settle - Utc::now()).to_std() {
            if !wait.is_zero() {
                return Err(Failure::transient(
                    Reason::RecoveringCreate,
                    format!(
                        "an interrupted create may still reach {}; keysmith looks for its key again at {} before creating a new one",
                        r.p.provider_type,
                        ts(&settle)
                    ),
                    Some(wait),
                ));
            }
        }
    }
    st.pending_create = None;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn key(id: &str, name: &str, created: &str, attempt: Option<&str>) -> ProviderKey {
        ProviderKey {
            id: id.into(),
            name: name.into(),
            active: true,
            created_at: Some(at(created)),
            attempt: attempt.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn orphans_are_the_attempts_keys_nobody_holds() {
        let pending = PendingCreate {
            name: "team-a/chat".into(),
            started_at: "2026-06-01T12:00:00Z".into(),
            attempt: "a1".into(),
            scope: None,
        };
        let mut revoked = key("gone", "team-a/chat", "2026-06-01T12:00:01Z", None);
        revoked.active = false;
        let keys = [
            key("orphan", "team-a/chat", "2026-06-01T12:00:01Z", None),
            key("skewed", "team-a/chat", "2026-06-01T11:56:00Z", Some("a1")),
            key("older", "team-a/chat", "2026-06-01T11:50:00Z", None),
            key("other-name", "team-a/web", "2026-06-01T12:00:01Z", None),
            key(
                "other-attempt",
                "team-a/chat",
                "2026-06-01T12:00:01Z",
                Some("a2"),
            ),
            key("current", "team-a/chat", "2026-06-01T12:00:01Z", None),
            key(
                "delivered",
                "team-a/chat",
                "2026-06-01T12:00:01Z",
                Some("a1"),
            ),
            revoked,
        ];
        let current = "current".to_string();
        let delivered = "delivered".to_string();
        let since = created_since(&pending, None);
        let mut got =
            orphans_of_attempt(&keys, &pending, since, &[Some(&current), Some(&delivered)]);
        got.sort();
        assert_eq!(got, ["orphan", "skewed"]);
    }

    #[test]
    fn keys_other_apikeys_hold_or_may_be_creating_are_spared() {
        use crate::api::{ApiKeySpec, PreviousKey};
        let me = {
            let mut a = ApiKey::new("me", ApiKeySpec::default());
            a.metadata.uid = Some("u-me".into());
            a.status = Some(ApiKeyStatus {
                key_id: Some("mine-current".into()),
                ..Default::default()
            });
            a
        };
        let other = |uid: &str, st: ApiKeyStatus| {
            let mut a = ApiKey::new(uid, ApiKeySpec::default());
            a.metadata.uid = Some(uid.into());
            a.status = Some(st);
            a
        };
        let all = [
            me.clone(),
            other(
                "u-1",
                ApiKeyStatus {
                    provider_type: Some("openrouter".into()),
                    key_id: Some("victim".into()),
                    previous_keys: vec![PreviousKey {
                        key_id: "victim-old".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ),
            other(
                "u-2",
                ApiKeyStatus {
                    provider_type: Some("boltz".into()),
                    key_id: Some("elsewhere".into()),
                    ..Default::default()
                },
            ),
        ];
        let others = Others::of(all.iter(), &me, "openrouter");
        assert!(others.keys.contains("victim") && others.keys.contains("victim-old"));
        assert!(!others.keys.contains("mine-current") && !others.keys.contains("elsewhere"));

        let pending = PendingCreate {
            name: "shared".into(),
            started_at: "2026-06-01T12:00:00Z".into(),
            attempt: "a1".into(),
            scope: None,
        };
        let (mine, spared) = provably_mine(
            vec!["victim".into(), "stray".into()],
            &pending,
            &others,
            |_| None,
        );
        assert_eq!(
            (mine, spared),
            (vec!["stray".to_string()], vec!["victim".to_string()])
        );

        // Another ApiKey creating under the same name: no name-only candidate is provably ours,
        // but one carrying our attempt id is.
        let mut busy = others;
        busy.pending_names.insert("shared".into());
        let (mine, spared) = provably_mine(
            vec!["stray".into(), "tagged".into()],
            &pending,
            &busy,
            |id| (id == "tagged").then(|| "a1".to_string()),
        );
        assert_eq!(
            (mine, spared),
            (vec!["tagged".to_string()], vec!["stray".to_string()])
        );
    }

    fn pending(name: &str, attempt: &str) -> PendingCreate {
        PendingCreate {
            name: name.into(),
            started_at: "2026-06-01T12:00:00Z".into(),
            attempt: attempt.into(),
            scope: None,
        }
    }

    #[test]
    fn a_claimed_key_is_tied_to_the_attempt_only_by_the_providers_listing() {
        let provisional = pending("keysmith-attempt-a1", "a1");
        let since = created_since(&provisional, None);
        let at_start = "2026-06-01T12:00:01Z";
        // Its provisional name or its attempt id prove it, whatever its creation time says.
        let k = key("k", "keysmith-attempt-a1", "2026-06-01T11:00:00Z", None);
        assert_eq!(tie(&k, &provisional, "chat", since), Tie::Proven);
        let k = key("k", "chat", "2026-06-01T11:00:00Z", Some("a1"));
        assert_eq!(tie(&k, &provisional, "chat", since), Tie::Proven);
        // Another attempt's id, another attempt's provisional name, another name: not ours.
        let k = key("k", "chat", at_start, Some("a2"));
        assert_eq!(tie(&k, &provisional, "chat", since), Tie::None);
        let k = key("k", "keysmith-attempt-a2", at_start, None);
        assert_eq!(tie(&k, &provisional, "chat", since), Tie::None);
        let k = key("k", "victim", at_start, None);
        assert_eq!(tie(&k, &provisional, "chat", since), Tie::None);
        // Renamed to the display name: by name only, and only if made since the attempt began.
        let k = key("k", "chat", at_start, None);
        assert_eq!(tie(&k, &provisional, "chat", since), Tie::ByName);
        let k = key("k", "chat", "2026-06-01T11:00:00Z", None);
        assert_eq!(tie(&k, &provisional, "chat", since), Tie::None);
        let mut revoked = key("k", "keysmith-attempt-a1", at_start, None);
        revoked.active = false;
        assert_eq!(tie(&revoked, &provisional, "chat", since), Tie::None);
        // A provider that renames nothing (Boltz): the display name is the attempt's name.
        let named = pending("chat", "a1");
        let k = key("k", "chat", at_start, None);
        assert_eq!(tie(&k, &named, "chat", since), Tie::ByName);

        // A tie by name proves delivery only with the other ApiKeys' view, and only for a key
        // none of them holds while none of them creates under that name.
        let mut others = Others::default();
        assert!(!proves_delivery("k", Tie::ByName, &named, None));
        assert!(proves_delivery("k", Tie::ByName, &named, Some(&others)));
        others.keys.insert("k".into());
        assert!(!proves_delivery("k", Tie::ByName, &named, Some(&others)));
        assert!(!proves_delivery("k", Tie::Proven, &named, Some(&others)));
        let mut busy = Others::default();
        busy.pending_names.insert("chat".into());
        assert!(!proves_delivery("k", Tie::ByName, &named, Some(&busy)));
        let partial = Others {
            partial: true,
            ..Default::default()
        };
        assert!(!proves_delivery("k", Tie::ByName, &named, Some(&partial)));
        assert!(proves_delivery("k", Tie::Proven, &named, None));
        assert!(!proves_delivery("k", Tie::None, &named, None));
    }

    #[test]
    fn a_provider_clock_minutes_behind_does_not_hide_the_attempts_key() {
        // The provider's clock is 10 minutes behind ours: its key of the attempt (by name, at a
        // provider that records no attempt and renames nothing) says 11:50:01.
        let named = pending("chat", "a1");
        let k = key("k", "chat", "2026-06-01T11:50:01Z", None);
        let no_offset = created_since(&named, None);
        assert_eq!(tie(&k, &named, "chat", no_offset), Tie::None);
        let behind = created_since(&named, Some(chrono::Duration::minutes(-10)));
        assert_eq!(tie(&k, &named, "chat", behind), Tie::ByName);
        let got = orphans_of_attempt([&k], &named, behind, &[]);
        assert_eq!(got, ["k"]);
        assert!(orphans_of_attempt([&k], &named, no_offset, &[]).is_empty());
    }

    #[test]
    fn an_attempt_settles_after_the_client_timeout_and_a_margin() {
        let pending = PendingCreate {
            name: "n".into(),
            started_at: "2026-06-01T12:00:00Z".into(),
            attempt: "a".into(),
            scope: None,
        };
        assert_eq!(
            settles_at(&pending, Duration::from_secs(15)),
            at("2026-06-01T12:00:20Z")
        );
    }
}
