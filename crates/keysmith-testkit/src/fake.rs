//! A scripted [`KeyBackend`] for branch tests that need no emulator: each method answers from its
//! own queue of scripted answers (an answer or a [`ProviderError`]), in order, and every call is
//! recorded. No HTTP, no state of its own: a listing is what the test scripted, not what earlier
//! creates made. A call with no scripted answer fails the test (it names the call), so a test
//! states every provider answer its branch depends on.
//!
//! ```text
//! let fake = ScriptedBackend::new(ProviderType::OpenRouter)
//!     .on_revoke(Err(ProviderError::Unavailable("502".into())))
//!     .on_revoke(Ok(()));
//! // … drive the code under test with `Arc::new(fake.clone())` …
//! assert_eq!(fake.calls(), [Call::Revoke { scope: KeyScope::default(), id: "k1".into() }]);
//! ```

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use keysmith_api::ProviderType;
use keysmith_providers::{
    AdoptMode, Capabilities, CreatedKey, Field, KeyBackend, KeyPage, KeyScope, KeySettings,
    ProviderError, ProviderKey, RotationStrategy,
};
use secrecy::SecretString;

/// A call the backend received (no secret is recorded: a pushed value is left out).
#[derive(Clone, Debug, PartialEq)]
pub enum Call {
    Verify,
    /// The settings' name and attempt id.
    Create {
        name: String,
        attempt: Option<String>,
    },
    ListPage {
        scope: KeyScope,
        cursor: Option<String>,
    },
    Get {
        scope: KeyScope,
        id: String,
    },
    Update {
        scope: KeyScope,
        id: String,
        fields: Vec<Field>,
    },
    Revoke {
        scope: KeyScope,
        id: String,
    },
    Regenerate {
        scope: KeyScope,
        id: String,
    },
    Push {
        name: String,
        existing: Option<String>,
    },
}

type Answers<T> = VecDeque<Result<T, ProviderError>>;

#[derive(Default)]
struct Script {
    verify: Answers<()>,
    create: Answers<CreatedKey>,
    list_page: Answers<KeyPage>,
    get: Answers<ProviderKey>,
    update: Answers<ProviderKey>,
    revoke: Answers<()>,
    regenerate: Answers<CreatedKey>,
    push: Answers<ProviderKey>,
}

struct Inner {
    provider: ProviderType,
    capabilities: Capabilities,
    records_attempt: bool,
    clock_offset: Option<chrono::Duration>,
    script: Mutex<Script>,
    calls: Mutex<Vec<Call>>,
}

/// The scripted backend. Clones share the script and the record of calls (hand one to the code
/// under test, keep one to script and to read the calls).
#[derive(Clone)]
pub struct ScriptedBackend(Arc<Inner>);

/// What the fake can do unless told otherwise: mint keys (rotated by minting a new one), update
/// their display name and limit; no adoption, no push.
pub const CAPABILITIES: Capabilities = Capabilities {
    mint: true,
    adopt: AdoptMode::No,
    push: false,
    supported: &[Field::DisplayName, Field::LimitAmount, Field::ExpiresAt],
    mutable: &[Field::DisplayName, Field::LimitAmount],
    secret_readable: false,
    rotation: RotationStrategy::MINT,
};

impl ScriptedBackend {
    /// A backend that says it is `provider`, with [`CAPABILITIES`] and nothing scripted.
    pub fn new(provider: ProviderType) -> Self {
        ScriptedBackend(Arc::new(Inner {
            provider,
            capabilities: CAPABILITIES,
            records_attempt: false,
            clock_offset: None,
            script: Mutex::default(),
            calls: Mutex::default(),
        }))
    }

    fn inner_mut(&mut self) -> &mut Inner {
        Arc::get_mut(&mut self.0).expect("configure the backend before cloning it")
    }

    /// Other capabilities (before the backend is cloned).
    pub fn with_capabilities(mut self, caps: Capabilities) -> Self {
        self.inner_mut().capabilities = caps;
        self
    }

    /// Created keys carry their attempt id where a listing shows it (before cloning).
    pub fn recording_attempts(mut self) -> Self {
        self.inner_mut().records_attempt = true;
        self
    }

    /// The provider's clock is `offset` ahead of ours (before cloning).
    pub fn with_clock_offset(mut self, offset: chrono::Duration) -> Self {
        self.inner_mut().clock_offset = Some(offset);
        self
    }

    fn script(&self, f: impl FnOnce(&mut Script)) -> Self {
        f(&mut self.0.script.lock().unwrap());
        self.clone()
    }

    /// The next `verify` answers `a`.
    pub fn on_verify(&self, a: Result<(), ProviderError>) -> Self {
        self.script(|s| s.verify.push_back(a))
    }
    /// The next `create` answers `a`.
    pub fn on_create(&self, a: Result<CreatedKey, ProviderError>) -> Self {
        self.script(|s| s.create.push_back(a))
    }
    /// The next `list_page` answers `a`.
    pub fn on_list_page(&self, a: Result<KeyPage, ProviderError>) -> Self {
        self.script(|s| s.list_page.push_back(a))
    }
    /// The next `get` answers `a`.
    pub fn on_get(&self, a: Result<ProviderKey, ProviderError>) -> Self {
        self.script(|s| s.get.push_back(a))
    }
    /// The next `update` answers `a`.
    pub fn on_update(&self, a: Result<ProviderKey, ProviderError>) -> Self {
        self.script(|s| s.update.push_back(a))
    }
    /// The next `revoke` answers `a`.
    pub fn on_revoke(&self, a: Result<(), ProviderError>) -> Self {
        self.script(|s| s.revoke.push_back(a))
    }
    /// The next `regenerate` answers `a`.
    pub fn on_regenerate(&self, a: Result<CreatedKey, ProviderError>) -> Self {
        self.script(|s| s.regenerate.push_back(a))
    }
    /// The next `push` answers `a`.
    pub fn on_push(&self, a: Result<ProviderKey, ProviderError>) -> Self {
        self.script(|s| s.push.push_back(a))
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.0.calls.lock().unwrap().clone()
    }

    /// Scripted answers nobody asked for (a branch the test expected was not taken): `(method,
    /// count)` for every method with answers left.
    pub fn unused(&self) -> Vec<(&'static str, usize)> {
        let s = self.0.script.lock().unwrap();
        [
            ("verify", s.verify.len()),
            ("create", s.create.len()),
            ("list_page", s.list_page.len()),
            ("get", s.get.len()),
            ("update", s.update.len()),
            ("revoke", s.revoke.len()),
            ("regenerate", s.regenerate.len()),
            ("push", s.push.len()),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect()
    }

    /// The backend as the controller holds one.
    pub fn backend(&self) -> Arc<dyn KeyBackend> {
        Arc::new(self.clone())
    }

    fn answer<T>(
        &self,
        call: Call,
        pick: impl FnOnce(&mut Script) -> &mut Answers<T>,
    ) -> Result<T, ProviderError> {
        let described = format!("{call:?}");
        self.0.calls.lock().unwrap().push(call);
        let mut script = self.0.script.lock().unwrap();
        match pick(&mut script).pop_front() {
            Some(a) => a,
            None => {
                drop(script);
                panic!("ScriptedBackend: no answer scripted for {described}")
            }
        }
    }
}

/// A key as a listing shows it: active, `id` and `name`, nothing else reported.
pub fn key(id: &str, name: &str) -> ProviderKey {
    ProviderKey {
        id: id.into(),
        name: name.into(),
        active: true,
        ..ProviderKey::default()
    }
}

/// A create's answer: `key` and a made-up value.
pub fn created(key: ProviderKey) -> CreatedKey {
    let secret = SecretString::from(format!("sk-fake-{}", key.id));
    CreatedKey { key, secret }
}

/// One page of a listing.
pub fn page(keys: Vec<ProviderKey>, next: Option<&str>) -> KeyPage {
    KeyPage {
        keys,
        next: next.map(str::to_string),
    }
}

#[async_trait]
impl KeyBackend for ScriptedBackend {
    fn provider(&self) -> ProviderType {
        self.0.provider
    }

    fn capabilities(&self) -> &Capabilities {
        &self.0.capabilities
    }

    fn records_attempt(&self) -> bool {
        self.0.records_attempt
    }

    fn clock_offset(&self) -> Option<chrono::Duration> {
        self.0.clock_offset
    }

    async fn verify(&self) -> Result<(), ProviderError> {
        self.answer(Call::Verify, |s| &mut s.verify)
    }

    async fn create(&self, settings: &KeySettings) -> Result<CreatedKey, ProviderError> {
        let call = Call::Create {
            name: settings.name.clone(),
            attempt: settings.attempt.clone(),
        };
        self.answer(call, |s| &mut s.create)
    }

    async fn list_page(
        &self,
        scope: &KeyScope,
        cursor: Option<&str>,
    ) -> Result<KeyPage, ProviderError> {
        let call = Call::ListPage {
            scope: scope.clone(),
            cursor: cursor.map(str::to_string),
        };
        self.answer(call, |s| &mut s.list_page)
    }

    async fn get(&self, scope: &KeyScope, id: &str) -> Result<ProviderKey, ProviderError> {
        let call = Call::Get {
            scope: scope.clone(),
            id: id.into(),
        };
        self.answer(call, |s| &mut s.get)
    }

    async fn update(
        &self,
        scope: &KeyScope,
        id: &str,
        _desired: &KeySettings,
        fields: &[Field],
    ) -> Result<ProviderKey, ProviderError> {
        let call = Call::Update {
            scope: scope.clone(),
            id: id.into(),
            fields: fields.to_vec(),
        };
        self.answer(call, |s| &mut s.update)
    }

    async fn revoke(&self, scope: &KeyScope, id: &str) -> Result<(), ProviderError> {
        let call = Call::Revoke {
            scope: scope.clone(),
            id: id.into(),
        };
        self.answer(call, |s| &mut s.revoke)
    }

    async fn regenerate(&self, scope: &KeyScope, id: &str) -> Result<CreatedKey, ProviderError> {
        let call = Call::Regenerate {
            scope: scope.clone(),
            id: id.into(),
        };
        self.answer(call, |s| &mut s.regenerate)
    }

    async fn push(
        &self,
        settings: &KeySettings,
        _value: &SecretString,
        existing: Option<&str>,
    ) -> Result<ProviderKey, ProviderError> {
        let call = Call::Push {
            name: settings.name.clone(),
            existing: existing.map(str::to_string),
        };
        self.answer(call, |s| &mut s.push)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_in_order_and_records_every_call() {
        let fake = ScriptedBackend::new(ProviderType::OpenRouter)
            .on_revoke(Err(ProviderError::Unavailable("502".into())))
            .on_revoke(Ok(()));
        let b = fake.backend();
        let at = KeyScope::default();
        assert_eq!(
            b.revoke(&at, "k1").await,
            Err(ProviderError::Unavailable("502".into()))
        );
        assert_eq!(b.revoke(&at, "k1").await, Ok(()));
        assert_eq!(fake.calls().len(), 2);
        assert_eq!(
            fake.calls()[1],
            Call::Revoke {
                scope: at,
                id: "k1".into()
            }
        );
        assert!(fake.unused().is_empty());
    }

    #[tokio::test]
    async fn each_method_answers_from_its_own_queue() {
        let fake = ScriptedBackend::new(ProviderType::Boltz)
            .on_list_page(Ok(page(vec![key("a", "x")], Some("2"))))
            .on_get(Err(ProviderError::NotFound("b".into())))
            .on_list_page(Ok(page(vec![key("b", "y")], None)));
        let at = KeyScope::default();
        let first = fake.list_page(&at, None).await.unwrap();
        assert_eq!(first.next.as_deref(), Some("2"));
        assert!(matches!(
            fake.get(&at, "b").await,
            Err(ProviderError::NotFound(_))
        ));
        let second = fake.list_page(&at, Some("2")).await.unwrap();
        assert_eq!(second.keys[0].name, "y");
        assert_eq!(
            fake.calls(),
            [
                Call::ListPage {
                    scope: at.clone(),
                    cursor: None
                },
                Call::Get {
                    scope: at.clone(),
                    id: "b".into()
                },
                Call::ListPage {
                    scope: at,
                    cursor: Some("2".into())
                },
            ]
        );
    }

    #[tokio::test]
    #[should_panic(expected = "no answer scripted for Create")]
    async fn an_unscripted_call_fails_the_test() {
        let fake = ScriptedBackend::new(ProviderType::OpenRouter);
        let _ = fake.create(&KeySettings::default()).await;
    }

    #[test]
    fn left_over_answers_are_reported() {
        let fake = ScriptedBackend::new(ProviderType::OpenRouter).on_get(Ok(key("a", "x")));
        assert_eq!(fake.unused(), [("get", 1)]);
    }
}
