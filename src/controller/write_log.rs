//! This process's last write of each ApiKey (`namespace/name`): the resourceVersion the server
//! gave it, kept until the watch cache shows that version. A reconcile whose cached copy is
//! older reads the server's copy instead ([`WriteLog::current_copy`]). Dropped with the ApiKey
//! ([`WriteLog::forget`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kube::api::Api;
use kube::{Client, ResourceExt};

use crate::api::ApiKey;

/// Per ApiKey: the resourceVersion of this process's last write of it.
#[derive(Debug, Default)]
pub struct WriteLog {
    written: Mutex<HashMap<String, String>>,
}

impl WriteLog {
    /// This process wrote the ApiKey `key`; the server now holds `resource_version`.
    pub fn wrote(&self, key: &str, resource_version: Option<String>) {
        let mut w = self.written.lock().unwrap();
        match resource_version {
            Some(rv) => w.insert(key.to_string(), rv),
            None => w.remove(key),
        };
    }

    /// Whether the cached copy of `key` at `cached` may be older than the server's: this
    /// process wrote it since and the cache does not show that write yet. A cache that caught
    /// up ends the entry.
    pub fn behind(&self, key: &str, cached: Option<&String>) -> bool {
        let mut w = self.written.lock().unwrap();
        match w.get(key) {
            Some(rv) if cached == Some(rv) => {
                w.remove(key);
                false
            }
            Some(_) => true,
            None => false,
        }
    }

    /// The copy of an ApiKey to reconcile: the watch cache's `cached`, unless it may be older
    /// than the server's, then the server's (one GET); `None` when the ApiKey is gone.
    ///
    /// The cache may be older when this process wrote the ApiKey since and the cache does not
    /// show that write yet (a reconcile triggered by the Secret it just wrote), or when the copy
    /// holds a `pendingCreate` marker: crash recovery is only for a create that really may have
    /// happened, never for a marker that a later write of this process already cleared. A GET
    /// per such reconcile is much cheaper than what a stale copy costs (a 409, a requeue, or a
    /// recovery with its listing).
    pub async fn current_copy(
        &self,
        client: &Client,
        cached: Arc<ApiKey>,
    ) -> Result<Option<Arc<ApiKey>>, kube::Error> {
        let key = format!(
            "{}/{}",
            cached.namespace().unwrap_or_default(),
            cached.name_any()
        );
        let behind = self.behind(&key, cached.resource_version().as_ref());
        let pending = cached
            .status
            .as_ref()
            .is_some_and(|s| s.pending_create.is_some());
        if !behind && !pending {
            return Ok(Some(cached));
        }
        let api: Api<ApiKey> =
            Api::namespaced(client.clone(), &cached.namespace().unwrap_or_default());
        let server = api.get_opt(&cached.name_any()).await?;
        self.forget(&key);
        Ok(server.map(|s| {
            if s.resource_version() == cached.resource_version() {
                cached
            } else {
                Arc::new(s)
            }
        }))
    }

    /// The ApiKey `key` is gone.
    pub fn forget(&self, key: &str) {
        self.written.lock().unwrap().remove(key);
    }

    /// Forget every ApiKey `gone` says is gone; returns how many went.
    pub fn forget_where(&self, gone: impl Fn(&str) -> bool) -> usize {
        let mut w = self.written.lock().unwrap();
        let before = w.len();
        w.retain(|k, _| !gone(k));
        before - w.len()
    }

    /// ApiKeys with a write the cache has not shown yet.
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn len(&self) -> usize {
        self.written.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_is_kept_until_the_cache_shows_it_or_the_apikey_goes() {
        let log = WriteLog::default();
        let rv = |s: &str| Some(s.to_string());
        log.wrote("team-a/k", rv("7"));
        assert!(log.behind("team-a/k", rv("6").as_ref()), "an older copy");
        assert!(log.behind("team-a/k", None));
        assert!(!log.behind("team-a/k", rv("7").as_ref()), "caught up");
        assert_eq!(log.len(), 0, "the entry ends when the cache caught up");
        assert!(!log.behind("team-a/k", rv("6").as_ref()), "nothing written");
        log.wrote("team-a/k", rv("8"));
        log.wrote("team-a/other", rv("9"));
        log.wrote("team-a/other", None);
        assert_eq!(log.len(), 1);
        log.forget("team-a/k");
        assert_eq!(log.len(), 0);
        log.wrote("team-a/x", rv("1"));
        assert_eq!(log.forget_where(|k| k == "team-a/x"), 1);
    }
}
