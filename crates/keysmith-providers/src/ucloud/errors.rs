//! UCloud's answers: the `RetCode` envelope of an HTTP 200, the business codes and the typed
//! errors they map to, and HTTP error statuses.

use std::time::Duration;

use serde_json::Value;

use crate::http::{retry_after, snippet, HttpResponse};
use crate::ProviderError;

/// Business error codes (HTTP 200, `RetCode != 0`). 171 and 172 are documented by UCloud; the
/// others follow UCloud's common codes where they exist and are keysmith's assumption otherwise
/// (the emulator uses the same ones; `docs/providers/ucloud.md` lists them).
pub mod retcode {
    /// `Missing Action`.
    pub const MISSING_ACTION: i64 = 160;
    /// `Action [X] not available`: the action does not exist.
    pub const ACTION_NOT_AVAILABLE: i64 = 161;
    /// `Missing signature`.
    pub const MISSING_SIGNATURE: i64 = 170;
    /// `Signature VerifyAC Error` (documented).
    pub const SIGNATURE_ERROR: i64 = 171;
    /// `User Not Exists`: unknown public key (documented).
    pub const USER_NOT_EXISTS: i64 = 172;
    /// `Missing params [X]`.
    pub const MISSING_PARAMS: i64 = 220;
    /// `Params [X] not available`: a value UCloud does not accept.
    pub const PARAMS_NOT_AVAILABLE: i64 = 230;
    /// `Params [X] too large`.
    pub const PARAMS_TOO_LARGE: i64 = 240;
    /// The key does not exist (keysmith's assumption; below 2000 because UCloud's SDKs retry
    /// every code from 2000 up as a server error, and a missing key is final).
    pub const KEY_NOT_FOUND: i64 = 1404;
    /// Too many requests (keysmith's assumption).
    pub const THROTTLED: i64 = 1429;
    /// From here up: server-side errors, retryable per UCloud's SDKs.
    pub const SERVER_ERROR_FLOOR: i64 = 2000;
}

/// The typed error for a business error (`RetCode != 0` in an HTTP 200 answer).
pub fn retcode_error(code: i64, message: &str, retry_after: Option<Duration>) -> ProviderError {
    use retcode::*;
    let msg = snippet(&format!("RetCode {code}: {message}"));
    let lower = message.to_ascii_lowercase();
    match code {
        MISSING_SIGNATURE | SIGNATURE_ERROR | USER_NOT_EXISTS => ProviderError::Auth(msg),
        ACTION_NOT_AVAILABLE => ProviderError::Unsupported(msg),
        // UCloud's usual answer to an id that does not resolve is "Params [X] not available";
        // for KeyId that means the key does not exist (a malformed id names no key either).
        PARAMS_NOT_AVAILABLE if message.contains("[KeyId]") => ProviderError::NotFound(msg),
        MISSING_ACTION | MISSING_PARAMS | PARAMS_NOT_AVAILABLE | PARAMS_TOO_LARGE => {
            ProviderError::Rejected(msg)
        }
        KEY_NOT_FOUND => ProviderError::NotFound(msg),
        THROTTLED => ProviderError::RateLimited { retry_after },
        c if c >= SERVER_ERROR_FLOOR => ProviderError::Unavailable(msg),
        // Codes keysmith does not know: read the message before calling it a rejection, so a
        // real throttling or key-not-found code with another number still lands right. Only a
        // message about a *key* counts as not found: NotFound on a delete means "already gone",
        // and reading e.g. a missing project that way would orphan the key.
        _ if lower.contains("too frequent")
            || lower.contains("too many request")
            || lower.contains("rate limit")
            || lower.contains("throttl") =>
        {
            ProviderError::RateLimited { retry_after }
        }
        _ if lower.contains("key")
            && (lower.contains("not found") || lower.contains("not exist")) =>
        {
            ProviderError::NotFound(msg)
        }
        _ => ProviderError::Rejected(msg),
    }
}

/// A read answered with a RetCode UCloud does not document (throttling has no documented
/// code, and its message may say anything) is retried with backoff rather than reported as a
/// rejection: a read changes nothing, and a permanent cause shows again on every retry.
pub fn unknown_code_on_a_read(code: i64, e: ProviderError) -> ProviderError {
    match e {
        ProviderError::Rejected(msg) if !retcode_is_documented(code) => {
            ProviderError::Unavailable(msg)
        }
        other => other,
    }
}

/// Whether UCloud documents `code` (the common codes of its API reference and the server-error
/// range). The key-specific codes ([`retcode::KEY_NOT_FOUND`], [`retcode::THROTTLED`]) are
/// keysmith's assumptions and do not count.
pub fn retcode_is_documented(code: i64) -> bool {
    use retcode::*;
    matches!(
        code,
        MISSING_ACTION
            | ACTION_NOT_AVAILABLE
            | MISSING_SIGNATURE
            | SIGNATURE_ERROR
            | USER_NOT_EXISTS
            | MISSING_PARAMS
            | PARAMS_NOT_AVAILABLE
            | PARAMS_TOO_LARGE
    ) || code >= SERVER_ERROR_FLOOR
}

/// The typed error for an HTTP error status (UCloud answers HTTP >= 400 only for
/// transport-level failures; the body may still be the usual envelope).
pub(super) fn http_error(resp: &HttpResponse) -> ProviderError {
    let message = serde_json::from_slice::<Value>(&resp.body)
        .ok()
        .and_then(|v| {
            let m = v.get("Message").and_then(Value::as_str)?.to_string();
            Some(match v.get("RetCode").and_then(Value::as_i64) {
                Some(c) => format!("RetCode {c}: {m}"),
                None => m,
            })
        })
        .map(|m| snippet(&m))
        .unwrap_or_else(|| resp.text_snippet());
    let status = resp.status.as_u16();
    let msg = format!("HTTP {status}: {message}");
    match status {
        401 | 403 => ProviderError::Auth(msg),
        404 => ProviderError::NotFound(msg),
        410 => ProviderError::Unsupported(msg),
        429 => ProviderError::RateLimited {
            retry_after: super::http::rate_limit_wait(&resp.headers),
        },
        500..=599 => ProviderError::Unavailable(msg),
        _ => ProviderError::Rejected(msg),
    }
}

/// Read the `RetCode` envelope of a 2xx answer to `action`: the answer's JSON object for
/// `RetCode` 0; otherwise the typed error, with the code alongside it. A read (`List`/`Get`/
/// `Describe`) answered with a code UCloud does not document is retryable
/// ([`unknown_code_on_a_read`]).
pub(super) fn envelope(
    action: &str,
    resp: &HttpResponse,
) -> Result<Value, (ProviderError, Option<i64>)> {
    let v: Value = resp.json().map_err(|e| (e, None))?;
    let code = v.get("RetCode").and_then(Value::as_i64).ok_or_else(|| {
        (
            ProviderError::Malformed(format!("{action} answer has no numeric RetCode")),
            None,
        )
    })?;
    if code != 0 {
        let message = v.get("Message").and_then(Value::as_str).unwrap_or("");
        let mut e = retcode_error(code, message, retry_after(&resp.headers));
        if action.starts_with("List") || action.starts_with("Get") || action.starts_with("Describe")
        {
            e = unknown_code_on_a_read(code, e);
        }
        return Err((e, Some(code)));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retcodes_map_to_typed_errors() {
        let e = |c, m| retcode_error(c, m, None);
        assert!(matches!(
            e(171, "Signature VerifyAC Error"),
            ProviderError::Auth(_)
        ));
        assert!(matches!(e(172, "User Not Exists"), ProviderError::Auth(_)));
        assert!(matches!(
            e(170, "Missing signature"),
            ProviderError::Auth(_)
        ));
        assert!(matches!(
            e(220, "Missing params [Name]"),
            ProviderError::Rejected(_)
        ));
        assert!(matches!(
            e(230, "Params [X] not available"),
            ProviderError::Rejected(_)
        ));
        assert!(matches!(
            e(240, "Params [X] too large"),
            ProviderError::Rejected(_)
        ));
        assert!(matches!(e(1404, "gone"), ProviderError::NotFound(_)));
        assert!(matches!(
            retcode_error(1429, "slow down", Some(Duration::from_secs(3))),
            ProviderError::RateLimited { retry_after: Some(d) } if d == Duration::from_secs(3)
        ));
        assert!(matches!(
            e(161, "Action [X] not available"),
            ProviderError::Unsupported(_)
        ));
        assert!(matches!(e(2000, "busy"), ProviderError::Unavailable(_)));
        assert!(matches!(e(5001, "db"), ProviderError::Unavailable(_)));
        // Unknown codes: the message decides, else a rejection.
        assert!(matches!(
            e(8001, "Request too frequent"),
            ProviderError::Unavailable(_)
        ));
        assert!(matches!(
            e(401, "Request too frequent"),
            ProviderError::RateLimited { .. }
        ));
        assert!(matches!(
            e(402, "APIKey [x] does not exist"),
            ProviderError::NotFound(_)
        ));
        assert!(matches!(
            e(402, "Project not exists"),
            ProviderError::Rejected(_)
        ));
        assert!(matches!(
            e(230, "Params [KeyId] not available"),
            ProviderError::NotFound(_)
        ));
        assert!(matches!(e(403, "quota"), ProviderError::Rejected(_)));
        assert!(e(220, "Missing params [Name]")
            .to_string()
            .contains("RetCode 220"));
    }
}
