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

/// Check a template without a value (validation before any provider call).
pub fn check_template(ak: &ApiKey) -> Result<(), String> {
    let dummy = SecretString::from("x");
    let v = TemplateValues {
        key: &dummy,
        key_id: "",
        key_hint: "",
        name: "",
    };
    if let Some(t) = ak.spec.secret.as_ref().and_then(|s| s.template.as_ref()) {
        for (k, tpl) in &t.data {
            if k == &ak.secret_data_key() {
                return Err(format!(
                    "secret.template.data.{k} collides with the data key holding the value (secret.key)"
                ));
            }
            render_template(tpl, &v)?;
        }
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
    existing.type_ == desired.type_
        && existing.data == desired.data
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
                secret: Some(SecretSpec {
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
                }),
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
