//! What other ApiKeys account for, and what that proves about a key: the keys they hold and
//! the names they create under now ([`Others`]), how a listed key is tied to an interrupted
//! attempt ([`Tie`]), and the two decisions taken on that view: which of an attempt's
//! candidates are provably its own ([`provably_mine`]) and whether a key the Secret claims was
//! delivered by the attempt ([`proves_delivery`]).
//!
//! The guard against key takeover (issue 17): a tenant can write its own ApiKey's spec and
//! annotations and the Secrets of its namespace, none of which proves anything; only the
//! provider's listing and the other ApiKeys' status do.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use kube::ResourceExt;

use super::super::context::Context;
use super::super::inuse::{scan_apikeys, ApiKeyScope};
use crate::api::{ApiKey, ApiKeyStatus, PendingCreate};
use crate::controller::error::Failure;
use crate::providers::ProviderKey;

/// The keys an ApiKey's status accounts for: current, replaced, and a rotation's new key (what
/// recovery keeps of its own, and what [`Others`] counts of everyone else's).
pub fn held_by(st: &ApiKeyStatus) -> impl Iterator<Item = &String> {
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
        let mut out = Others::default();
        let mut add = |page: &[ApiKey]| {
            let part = Self::of(page.iter(), ak, provider_type);
            out.keys.extend(part.keys);
            out.pending_names.extend(part.pending_names);
            false
        };
        match scan_apikeys(&ctx.client, &ctx.settings, ApiKeyScope::Cluster, &mut add).await {
            Ok(_) => {}
            Err(kube::Error::Api(e))
                if e.code == 403 && !ctx.settings.watch_namespaces.is_empty() =>
            {
                scan_apikeys(&ctx.client, &ctx.settings, ApiKeyScope::Served, &mut add).await?;
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
    let provisional = super::attempt::is_provisional(pending);
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
