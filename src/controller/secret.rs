//! Rendering the Secret an ApiKey's value is delivered in. Pure functions: no client.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::ByteString;
use kube::{Resource, ResourceExt};
use secrecy::{ExposeSecret, SecretString};

use crate::api::{
    ApiKey, ALLOW_ADOPT_ANNOTATION, KEY_ID_ANNOTATION, MANAGED_BY, MANAGED_BY_LABEL,
    OWNER_ANNOTATION,
};

/// Values a template may refer to.
pub struct TemplateValues<'a> {
    pub key: &'a SecretString,
    pub key_id: &'a str,
    pub key_hint: &'a str,
    pub name: &'a str,
}

/// Replace `{{ .key }}`, `{{ .keyID }}`, `{{ .keyHint }}` and `{{ .name }}` in `template`.
/// Unknown placeholders are an error naming them (never the value).
pub fn render_template(template: &str, v: &TemplateValues<'_>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| "unclosed {{ in secret.template.data".to_string())?;
        let expr = after[..end].trim();
        match expr {
            ".key" => out.push_str(v.key.expose_secret()),
            ".keyID" => out.push_str(v.key_id),
            ".keyHint" => out.push_str(v.key_hint),
            ".name" => out.push_str(v.name),
            other => {
                return Err(format!(
                    "unknown placeholder {{{{ {other} }}}} in secret.template.data; use .key, .keyID, .keyHint or .name"
                ))
            }
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The length `render_template` would give `template` with values of these lengths, computed
/// without rendering (issue 17: rendering 70,000 `{{ .key }}` with a 4 KiB allowance each took
/// 290 MiB before the size was checked). Counting stops once the length passes `limit`: the
/// answer is then some length above it. Unknown placeholders are the same error as rendering.
pub fn rendered_len(
    template: &str,
    key: usize,
    key_id: usize,
    key_hint: usize,
    name: usize,
    limit: usize,
) -> Result<usize, String> {
    let mut len = 0usize;
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        len += start;
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| "unclosed {{ in secret.template.data".to_string())?;
        len += match after[..end].trim() {
            ".key" => key,
            ".keyID" => key_id,
            ".keyHint" => key_hint,
            ".name" => name,
            other => {
                return Err(format!(
                    "unknown placeholder {{{{ {other} }}}} in secret.template.data; use .key, .keyID, .keyHint or .name"
                ))
            }
        };
        if len > limit {
            return Ok(len);
        }
        rest = &after[end + 2..];
    }
    Ok(len + rest.len())
}

/// The API server's limit on the total size of a Secret's data.
pub const MAX_SECRET_DATA: usize = 1024 * 1024;
/// The API server's limit on the total size of an object's annotations.
const MAX_ANNOTATIONS: usize = 256 * 1024;
/// Room left for values only known after the create (the key, its id, its hint): no provider's
/// key, id or hint comes near it.
const VALUE_ALLOWANCE: usize = 4096;

/// Secret types whose required data keys keysmith can never provide (the API server demands
/// annotations, or keys holding certificates or registry credentials).
const UNWRITABLE_TYPES: &[(&str, &str)] = &[
    (
        "kubernetes.io/service-account-token",
        "needs a service account annotation and is filled in by Kubernetes",
    ),
    (
        "bootstrap.kubernetes.io/token",
        "holds bootstrap tokens of a fixed format",
    ),
];

/// Secret types that require certain data keys.
const REQUIRED_KEYS: &[(&str, &[&str])] = &[
    ("kubernetes.io/tls", &["tls.crt", "tls.key"]),
    ("kubernetes.io/dockercfg", &[".dockercfg"]),
    ("kubernetes.io/dockerconfigjson", &[".dockerconfigjson"]),
    ("kubernetes.io/ssh-auth", &["ssh-privatekey"]),
];

/// A valid data key of a Secret (`[-._a-zA-Z0-9]+`, at most 253 characters, not `.` or `..`
/// and not starting with `..`), as the API server checks it.
pub fn check_data_key(k: &str) -> Result<(), String> {
    let ok_chars = k
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if k.is_empty() || k.len() > 253 || !ok_chars || k == "." || k == ".." || k.starts_with("..") {
        return Err(format!(
            "{k:?} is not a valid Secret data key: use 1 to 253 characters of [-._a-zA-Z0-9], not . or .. and not starting with .."
        ));
    }
    Ok(())
}

/// A DNS-1123 subdomain (names of Secrets and most objects).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A valid `type` of a Secret that keysmith can write: a qualified-name-like string, not one
/// whose required contents keysmith cannot produce, and carrying the data keys its type needs.
fn check_type(type_: &str, keys: &[&str]) -> Result<(), String> {
    let ok_chars = type_
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
    if type_.is_empty() || type_.len() > 253 || !ok_chars {
        return Err(format!(
            "secret.template.type {type_:?} is not a valid Secret type: use up to 253 characters of [-._/a-zA-Z0-9]"
        ));
    }
    if let Some((_, why)) = UNWRITABLE_TYPES.iter().find(|(t, _)| *t == type_) {
        return Err(format!(
            "secret.template.type {type_} cannot be written by keysmith: it {why}"
        ));
    }
    if let Some((_, need)) = REQUIRED_KEYS.iter().find(|(t, _)| *t == type_) {
        let missing: Vec<&str> = need.iter().copied().filter(|n| !keys.contains(n)).collect();
        if !missing.is_empty() {
            return Err(format!(
                "secret.template.type {type_} requires the data keys {}; add them to secret.template.data or secret.key",
                missing.join(", ")
            ));
        }
    }
    if type_ == "kubernetes.io/basic-auth"
        && !keys.iter().any(|k| *k == "username" || *k == "password")
    {
        return Err("secret.template.type kubernetes.io/basic-auth requires a username or password data key".into());
    }
    Ok(())
}

/// Check what the Secret of `ak` will be without a value (validation before any provider
/// call): its name, its data keys, its type, the templates, and its size.
pub fn check_template(ak: &ApiKey) -> Result<(), String> {
    let name = ak.secret_name();
    if !is_dns1123_subdomain(&name) {
        return Err(format!(
            "secret.name {name:?} is not a valid Secret name (a DNS-1123 subdomain: lowercase letters, digits, '-' and '.', at most 253 characters)"
        ));
    }
    let value_key = ak.secret_data_key();
    check_data_key(&value_key).map_err(|m| format!("secret.key: {m}"))?;
    let Some(t) = ak.spec.secret.as_ref().and_then(|s| s.template.as_ref()) else {
        return Ok(());
    };
    let name_len = ak.display_name().len();
    let mut size = VALUE_ALLOWANCE + value_key.len();
    for (k, tpl) in &t.data {
        check_data_key(k).map_err(|m| format!("secret.template.data: {m}"))?;
        if k == &value_key {
            return Err(format!(
                "secret.template.data.{k} collides with the data key holding the value (secret.key)"
            ));
        }
        // Sizes are added up, never rendered: each placeholder counts as the allowance.
        let room = MAX_SECRET_DATA.saturating_sub(size + k.len());
        size += k.len()
            + rendered_len(
                tpl,
                VALUE_ALLOWANCE,
                VALUE_ALLOWANCE,
                VALUE_ALLOWANCE,
                name_len,
                room,
            )?;
        if size > MAX_SECRET_DATA {
            break;
        }
    }
    if size > MAX_SECRET_DATA {
        return Err(format!(
            "the rendered Secret would hold about {size} bytes of data; Kubernetes accepts at most {MAX_SECRET_DATA}: shorten secret.template.data"
        ));
    }
    let annotations: usize = t.annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    if annotations + 512 > MAX_ANNOTATIONS {
        return Err(format!(
            "secret.template.annotations total {annotations} bytes; Kubernetes accepts at most {MAX_ANNOTATIONS} with keysmith's own"
        ));
    }
    if let Some(type_) = &t.type_ {
        let mut keys: Vec<&str> = t.data.keys().map(String::as_str).collect();
        keys.push(&value_key);
        check_type(type_, &keys)?;
    }
    Ok(())
}

/// The Secret for an ApiKey holding `value` of key `key_id`.
pub fn render_secret(
    ak: &ApiKey,
    value: &SecretString,
    key_id: &str,
    key_hint: &str,
) -> Result<Secret, String> {
    let name = ak.secret_name();
    let ns = ak.namespace().unwrap_or_default();
    let template = ak
        .spec
        .secret
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();

    let mut labels: BTreeMap<String, String> = template.labels.clone();
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    let mut annotations: BTreeMap<String, String> = template.annotations.clone();
    annotations.insert(KEY_ID_ANNOTATION.into(), key_id.into());
    // Changes with every new value (a new id, or an in-place regenerate of an adopted key).
    let issued = ak
        .spec
        .key_ref
        .as_ref()
        .and(ak.status.as_ref())
        .and_then(|s| s.last_rotated_at.as_deref());
    annotations.insert(
        crate::api::KEY_HASH_ANNOTATION.into(),
        super::restart::key_hash(key_id, issued),
    );
    annotations.insert(OWNER_ANNOTATION.into(), format!("{ns}/{}", ak.name_any()));

    let mut data = BTreeMap::new();
    let values = TemplateValues {
        key: value,
        key_id,
        key_hint,
        name: &ak.display_name(),
    };
    for (k, tpl) in &template.data {
        data.insert(
            k.clone(),
            ByteString(render_template(tpl, &values)?.into_bytes()),
        );
    }
    data.insert(
        ak.secret_data_key(),
        ByteString(value.expose_secret().as_bytes().to_vec()),
    );

    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(ns),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![owner_reference(ak)]),
            ..Default::default()
        },
        type_: Some(template.type_.unwrap_or_else(|| "Opaque".into())),
        data: Some(data),
        ..Default::default()
    })
}

/// Controller owner reference to the ApiKey (the Secret is garbage-collected with it).
pub fn owner_reference(ak: &ApiKey) -> OwnerReference {
    ak.controller_owner_ref(&())
        .expect("an ApiKey read from the API server has a uid")
}

/// Who owns an existing Secret, as far as keysmith is concerned.
#[derive(Debug, PartialEq, Eq)]
pub enum SecretOwnership {
    /// Written by keysmith for this ApiKey.
    Ours,
    /// The user annotated it to let keysmith take it over.
    Adoptable,
    /// Someone else's: never overwritten.
    Foreign(String),
}

pub fn ownership(ak: &ApiKey, secret: &Secret) -> SecretOwnership {
    let ns = ak.namespace().unwrap_or_default();
    let me = format!("{ns}/{}", ak.name_any());
    let managed = secret.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY);
    let owner = secret.annotations().get(OWNER_ANNOTATION);
    let owned_by_uid = ak
        .uid()
        .is_some_and(|uid| secret.owner_references().iter().any(|o| o.uid == uid));
    if managed && (owner == Some(&me) || owned_by_uid) {
        return SecretOwnership::Ours;
    }
    if secret
        .annotations()
        .get(ALLOW_ADOPT_ANNOTATION)
        .map(String::as_str)
        == Some("true")
    {
        return SecretOwnership::Adoptable;
    }
    let who = match owner {
        Some(o) if managed => format!("it belongs to ApiKey {o}"),
        _ => "keysmith did not create it".into(),
    };
    SecretOwnership::Foreign(who)
}

/// The value held by a Secret of ours, if present and non-empty.
pub fn value_of(ak: &ApiKey, secret: &Secret) -> Option<SecretString> {
    let bytes = secret.data.as_ref()?.get(&ak.secret_data_key())?;
    if bytes.0.is_empty() {
        return None;
    }
    String::from_utf8(bytes.0.clone())
        .ok()
        .map(SecretString::from)
}

/// The key id a Secret of ours says it holds.
pub fn key_id_of(secret: &Secret) -> Option<String> {
    secret.annotations().get(KEY_ID_ANNOTATION).cloned()
}

/// Whether `existing` already has everything `desired` sets (so no write is needed).
pub fn is_up_to_date(existing: &Secret, desired: &Secret) -> bool {
    let sub = |want: &Option<BTreeMap<String, String>>, have: &Option<BTreeMap<String, String>>| {
        want.iter()
            .flatten()
            .all(|(k, v)| have.as_ref().and_then(|h| h.get(k)) == Some(v))
    };
    // Only the data keys keysmith writes: a key someone else added is theirs (invariant 4).
    let data = desired
        .data
        .iter()
        .flatten()
        .all(|(k, v)| existing.data.as_ref().and_then(|d| d.get(k)) == Some(v));
    existing.type_ == desired.type_
        && data
        && sub(&desired.metadata.labels, &existing.metadata.labels)
        && sub(
            &desired.metadata.annotations,
            &existing.metadata.annotations,
        )
        && existing.owner_references().iter().any(|o| {
            desired
                .owner_references()
                .first()
                .is_some_and(|d| d.uid == o.uid)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ApiKeySpec, SecretSpec, SecretTemplate};

    fn apikey() -> ApiKey {
        let mut ak = ApiKey::new(
            "chat",
            ApiKeySpec {
                secret: Some(Box::new(SecretSpec {
                    name: None,
                    key: None,
                    template: Some(SecretTemplate {
                        type_: None,
                        labels: [("team".to_string(), "a".to_string())].into(),
                        annotations: Default::default(),
                        data: [
                            ("OPENROUTER_API_KEY".to_string(), "{{ .key }}".to_string()),
                            ("URL".to_string(), "https://x/{{.keyID}}".to_string()),
                        ]
                        .into(),
                    }),
                })),
                ..Default::default()
            },
        );
        ak.metadata.namespace = Some("team-a".into());
        ak.metadata.uid = Some("uid-1".into());
        ak
    }

    #[test]
    fn renders_value_template_labels_and_owner() {
        let ak = apikey();
        let v = SecretString::from("sk-test-123");
        let s = render_secret(&ak, &v, "id-9", "sk-t…").unwrap();
        let data = s.data.as_ref().unwrap();
        assert_eq!(data["api-key"].0, b"sk-test-123");
        assert_eq!(data["OPENROUTER_API_KEY"].0, b"sk-test-123");
        assert_eq!(data["URL"].0, b"https://x/id-9");
        assert_eq!(s.labels()[MANAGED_BY_LABEL], "keysmith");
        assert_eq!(s.labels()["team"], "a");
        assert_eq!(s.annotations()[KEY_ID_ANNOTATION], "id-9");
        assert_eq!(s.owner_references()[0].uid, "uid-1");
        assert_eq!(s.type_.as_deref(), Some("Opaque"));
        assert_eq!(ownership(&ak, &s), SecretOwnership::Ours);
        assert!(is_up_to_date(&s, &s));
    }

    #[test]
    fn unknown_placeholders_are_rejected_without_the_value() {
        let v = SecretString::from("sk-very-secret");
        let vals = TemplateValues {
            key: &v,
            key_id: "i",
            key_hint: "h",
            name: "n",
        };
        let err = render_template("{{ .key }}{{ .token }}", &vals).unwrap_err();
        assert!(err.contains(".token"));
        assert!(!err.contains("sk-very-secret"));
        assert!(render_template("{{ .key", &vals).is_err());
    }

    /// The size check counts what rendering would give, without rendering.
    #[test]
    fn rendered_len_is_the_rendered_length() {
        let key = SecretString::from("k".repeat(70));
        let v = TemplateValues {
            key: &key,
            key_id: "id-123",
            key_hint: "sk-…x",
            name: "team-a/chat",
        };
        for tpl in [
            "",
            "plain",
            "{{ .key }}",
            "a{{.key}}b{{ .keyID }}c{{ .keyHint}}d{{.name }}e",
            "{\"k\": \"{{ .key }}\", \"n\": \"{{ .name }}\"}",
        ] {
            let rendered = render_template(tpl, &v).unwrap().len();
            let counted = rendered_len(tpl, 70, 6, "sk-…x".len(), 11, usize::MAX).unwrap();
            assert_eq!(counted, rendered, "{tpl}");
        }
        assert!(rendered_len("{{ .nope }}", 1, 1, 1, 1, usize::MAX)
            .unwrap_err()
            .contains("unknown placeholder"));
        assert!(rendered_len("{{ .key", 1, 1, 1, 1, usize::MAX)
            .unwrap_err()
            .contains("unclosed"));
        // Past the limit, counting stops: some length above it.
        let huge = "{{.key}}".repeat(70_000);
        let n = rendered_len(&huge, 4096, 0, 0, 0, 1 << 20).unwrap();
        assert!(n > 1 << 20 && n <= (1 << 20) + 4096, "{n}");
    }

    /// Issue 17: 70,000 × `{{.key}}` in one data entry (560 KB) is refused as too large.
    #[test]
    fn a_template_of_many_placeholders_is_too_large() {
        let mut ak = apikey();
        ak.spec
            .secret
            .as_mut()
            .unwrap()
            .template
            .as_mut()
            .unwrap()
            .data
            .insert("MANY".into(), "{{.key}}".repeat(70_000));
        let err = check_template(&ak).unwrap_err();
        assert!(err.contains("Kubernetes accepts at most"), "{err}");
    }

    #[test]
    fn templates_kubernetes_would_refuse_are_caught_before_any_call() {
        let with = |f: &dyn Fn(&mut SecretSpec)| {
            let mut ak = apikey();
            f(ak.spec.secret.as_mut().unwrap());
            check_template(&ak)
        };
        assert!(check_template(&apikey()).is_ok());
        for (bad, why) in [
            ("not a valid key!", "data key"),
            ("..hidden", "data key"),
            (".", "data key"),
        ] {
            let err = with(&|s: &mut SecretSpec| {
                s.template
                    .as_mut()
                    .unwrap()
                    .data
                    .insert(bad.into(), "{{ .key }}".into());
            })
            .unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        assert!(with(&|s: &mut SecretSpec| s.key = Some("a/b".into())).is_err());
        assert!(with(&|s: &mut SecretSpec| s.name = Some("Not_A_Name".into())).is_err());
        assert!(with(&|s: &mut SecretSpec| s.name = Some("ok.name-1".into())).is_ok());
        let typed = |ty: &str| {
            with(&|s: &mut SecretSpec| s.template.as_mut().unwrap().type_ = Some(ty.into()))
        };
        assert!(typed("example.com/api-key").is_ok());
        assert!(typed("Opaque").is_ok());
        assert!(typed("not a type!").is_err());
        assert!(typed("kubernetes.io/service-account-token").is_err());
        let tls = typed("kubernetes.io/tls").unwrap_err();
        assert!(tls.contains("tls.crt"), "{tls}");
        let huge = with(&|s: &mut SecretSpec| {
            s.template
                .as_mut()
                .unwrap()
                .data
                .insert("BLOB".into(), "x".repeat(MAX_SECRET_DATA));
        })
        .unwrap_err();
        assert!(huge.contains("bytes"), "{huge}");
    }

    #[test]
    fn only_the_data_keysmith_writes_is_compared() {
        let ak = apikey();
        let v = SecretString::from("sk-test-123");
        let desired = render_secret(&ak, &v, "id-9", "h").unwrap();
        let mut theirs = desired.clone();
        theirs
            .data
            .as_mut()
            .unwrap()
            .insert("EXTRA".into(), ByteString(b"x".to_vec()));
        assert!(is_up_to_date(&theirs, &desired));
        theirs
            .data
            .as_mut()
            .unwrap()
            .insert("api-key".into(), ByteString(b"edited".to_vec()));
        assert!(!is_up_to_date(&theirs, &desired));
    }

    #[test]
    fn foreign_secrets_are_not_ours() {
        let ak = apikey();
        let mut s = Secret::default();
        s.metadata.name = Some("chat".into());
        assert!(matches!(ownership(&ak, &s), SecretOwnership::Foreign(_)));
        s.metadata.annotations =
            Some([(ALLOW_ADOPT_ANNOTATION.to_string(), "true".to_string())].into());
        assert_eq!(ownership(&ak, &s), SecretOwnership::Adoptable);
    }
}
