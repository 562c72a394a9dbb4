//! `--normalise`: answer as a real provider may, equal in meaning to what was stored but written
//! differently (issue 20 item 6). A client that compares the provider's answer with the spec
//! verbatim then sees drift where there is none, and writes on every refresh; with this mode
//! on, a converged key must draw no write at all.
//!
//! Applied to the JSON answers of a provider's API routes (never to `/_emulator/` control
//! endpoints), per provider, to the fields that provider is known to hold
//! ([`Field`] lists them in each emulator's `build`):
//!
//! - lists whose order means nothing come back in another order (reversed);
//! - IPv4/IPv6 entries come back canonical as CIDR blocks: `10.0.0.1` → `10.0.0.1/32`, host bits
//!   cleared (`10.1.2.3/8` → `10.0.0.0/8`); ranges (`a-b`) are kept as written;
//! - decimals are padded: a JSON number `10` → `10.0`, a decimal string `"5"` → `"5.00"`;
//! - RFC 3339 times come back with milliseconds and a `+00:00` offset;
//! - every JSON object gains a field no client knows ([`UNKNOWN_FIELD`]).
//!
//! Model names are left in their case: no provider's reference (../shared/providers/) says its
//! model names are case-insensitive, so changing the case would change the meaning.
//!
//! The emulators' own code: nothing here is shared with the clients.

use std::net::IpAddr;
use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::Request;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use serde_json::{Map, Number, Value};

use crate::Faults;

/// The field added to every object of a normalised answer.
pub const UNKNOWN_FIELD: &str = "x_emulator_added";

/// Largest answer body the normaliser rewrites (larger ones pass unchanged).
const MAX_BODY: usize = 8 << 20;

/// How one named field is rewritten, wherever it appears in an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rewrite {
    /// A JSON array whose order means nothing: reversed.
    Unordered,
    /// A JSON array of IP addresses/CIDR blocks: each canonical as a block, then reversed.
    Cidrs,
    /// A string of newline-separated IP entries (UCloud's `IPWhitelist`): as [`Rewrite::Cidrs`].
    CidrLines,
    /// A decimal: a JSON number gains a fraction (`10` → `10.0`), a decimal string two places
    /// (`"5"` → `"5.00"`).
    Decimal,
    /// An RFC 3339 time: with milliseconds and a `+00:00` offset.
    Time,
}

/// One provider's fields: `(name, rewrite)`, matched by object key at any depth.
pub type Field = (&'static str, Rewrite);

/// Wrap a provider's router so that its JSON answers are normalised per `fields`.
pub fn layer(router: Router, fields: &'static [Field], faults: Arc<Faults>) -> Router {
    router.layer(middleware::from_fn(move |req: Request, next: Next| {
        normalise_answer(fields, faults.clone(), req, next)
    }))
}

async fn normalise_answer(
    fields: &'static [Field],
    faults: Arc<Faults>,
    req: Request,
    next: Next,
) -> Response {
    if req.uri().path().starts_with("/_emulator/") {
        return next.run(req).await;
    }
    let resp = next.run(req).await;
    let is_json = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = to_bytes(body, MAX_BODY).await else {
        parts.headers.remove(CONTENT_LENGTH);
        return Response::from_parts(parts, Body::empty());
    };
    let Ok(mut v) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    normalise(&mut v, fields);
    faults.count("normalised");
    let out = serde_json::to_vec(&v).unwrap_or_else(|_| bytes.to_vec());
    parts.headers.remove(CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(out))
}

/// Rewrite `v` in place: the named fields per `fields`, and an unknown field in every object.
pub fn normalise(v: &mut Value, fields: &[Field]) {
    match v {
        Value::Array(items) => items.iter_mut().for_each(|i| normalise(i, fields)),
        Value::Object(map) => {
            for (k, item) in map.iter_mut() {
                match fields.iter().find(|(name, _)| name == k) {
                    Some((_, rw)) => rewrite(item, *rw, fields),
                    None => normalise(item, fields),
                }
            }
            map.insert(
                UNKNOWN_FIELD.into(),
                Value::Object(Map::from_iter([(
                    "note".to_string(),
                    Value::String("a field no client knows".into()),
                )])),
            );
        }
        _ => {}
    }
}

fn rewrite(v: &mut Value, rw: Rewrite, fields: &[Field]) {
    match (rw, &mut *v) {
        (Rewrite::Unordered, Value::Array(items)) => {
            items.reverse();
            items.iter_mut().for_each(|i| normalise(i, fields));
        }
        (Rewrite::Cidrs, Value::Array(items)) => {
            for i in items.iter_mut() {
                if let Value::String(s) = i {
                    *s = cidr(s);
                }
            }
            items.reverse();
        }
        (Rewrite::CidrLines, Value::String(s)) => {
            let mut lines: Vec<String> = s
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(cidr)
                .collect();
            lines.reverse();
            *s = lines.join("\n");
        }
        (Rewrite::Decimal, Value::Number(n)) => {
            if let Some(f) = n.as_f64() {
                // serde_json writes a float with a fraction: 10 → 10.0.
                if let Some(n) = Number::from_f64(f) {
                    *v = Value::Number(n);
                }
            }
        }
        (Rewrite::Decimal, Value::String(s)) => *s = pad_decimal(s),
        (Rewrite::Time, Value::String(s)) => {
            if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
                *s = t
                    .with_timezone(&chrono::Utc)
                    .format("%Y-%m-%dT%H:%M:%S%.3f+00:00")
                    .to_string();
            }
        }
        // A field of another shape than expected (null, absent data): untouched.
        (_, other) => normalise(other, fields),
    }
}

/// An IP address or block as a canonical CIDR block; anything else (a range, a typo) as it is.
pub fn cidr(entry: &str) -> String {
    let e = entry.trim();
    if let Ok(ip) = e.parse::<IpAddr>() {
        let bits = if ip.is_ipv4() { 32 } else { 128 };
        return format!("{ip}/{bits}");
    }
    if let Some((addr, len)) = e.split_once('/') {
        if let (Ok(ip), Ok(len)) = (addr.parse::<IpAddr>(), len.parse::<u8>()) {
            match ip {
                IpAddr::V4(a) if len <= 32 => {
                    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                    let net = std::net::Ipv4Addr::from(u32::from(a) & mask);
                    return format!("{net}/{len}");
                }
                IpAddr::V6(a) if len <= 128 => {
                    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                    let net = std::net::Ipv6Addr::from(u128::from(a) & mask);
                    return format!("{net}/{len}");
                }
                _ => {}
            }
        }
    }
    e.to_string()
}

/// A decimal string padded to at least two places (`"5"` → `"5.00"`, `"12.5"` → `"12.50"`);
/// anything that is not a plain decimal as it is.
pub fn pad_decimal(s: &str) -> String {
    let t = s.trim();
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return s.to_string();
    }
    format!("{int}.{frac:0<2}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const FIELDS: &[Field] = &[
        ("models", Rewrite::Unordered),
        ("ips", Rewrite::Cidrs),
        ("lines", Rewrite::CidrLines),
        ("limit", Rewrite::Decimal),
        ("at", Rewrite::Time),
    ];

    #[test]
    fn every_named_field_is_rewritten_to_the_same_meaning() {
        let mut v = json!({
            "data": [{
                "name": "Keep-Case",
                "models": ["b/Model-X", "a/model-y"],
                "ips": ["10.0.0.1", "10.1.2.3/8", "2001:DB8::1"],
                "lines": "192.168.1.10/24\n1.2.3.4\n10.0.0.1-10.0.0.9",
                "limit": 10,
                "at": "2026-01-02T03:04:05Z",
                "nested": {"limit": "5"}
            }],
            "total": 1
        });
        normalise(&mut v, FIELDS);
        let k = &v["data"][0];
        assert_eq!(k["name"], "Keep-Case");
        assert_eq!(k["models"], json!(["a/model-y", "b/Model-X"]));
        assert_eq!(
            k["ips"],
            json!(["2001:db8::1/128", "10.0.0.0/8", "10.0.0.1/32"])
        );
        assert_eq!(k["lines"], "10.0.0.1-10.0.0.9\n1.2.3.4/32\n192.168.1.0/24");
        assert_eq!(serde_json::to_string(&k["limit"]).unwrap(), "10.0");
        assert_eq!(k["at"], "2026-01-02T03:04:05.000+00:00");
        assert_eq!(k["nested"]["limit"], "5.00");
        for obj in [&v, k, &k["nested"]] {
            assert!(obj.get(UNKNOWN_FIELD).is_some(), "{obj}");
        }
        assert_eq!(v["total"], 1, "fields not named are untouched");
    }

    #[test]
    fn decimals_are_padded_and_other_text_kept() {
        assert_eq!(pad_decimal("5"), "5.00");
        assert_eq!(pad_decimal("12.5"), "12.50");
        assert_eq!(pad_decimal("0.125"), "0.125");
        assert_eq!(pad_decimal(""), "");
        assert_eq!(pad_decimal("ten"), "ten");
        assert_eq!(cidr("not an ip"), "not an ip");
        assert_eq!(cidr("10.0.0.0/33"), "10.0.0.0/33");
        assert_eq!(cidr("0.0.0.0/0"), "0.0.0.0/0");
    }
}
