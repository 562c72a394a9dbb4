//! Inference: `GET /v1/models` and the VK quota, authenticated by a virtual key.

use super::*;

// ---- inference -----------------------------------------------------------------------------

/// The virtual key a request presents (`x-bf-vk`, Bearer, `x-api-key`, `x-goog-api-key`).
pub(super) fn presented_vk(headers: &HeaderMap) -> Option<String> {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(v) = h("x-bf-vk") {
        return Some(v.to_string());
    }
    let bearer = h("authorization").and_then(|a| a.strip_prefix("Bearer "));
    [bearer, h("x-api-key"), h("x-goog-api-key")]
        .into_iter()
        .flatten()
        .find(|v| v.starts_with("sk-bf-"))
        .map(str::to_string)
}

pub(super) async fn models(State(emu): State<Arc<Emu>>, headers: HeaderMap) -> Response {
    let Some(value) = presented_vk(&headers) else {
        return render_error(StatusCode::UNAUTHORIZED, "virtual key is required");
    };
    let mut db = emu.db.lock().unwrap();
    let Some(vk) = db.vks.iter_mut().find(|v| v.value == value) else {
        return render_error(StatusCode::UNAUTHORIZED, "invalid virtual key");
    };
    if !vk.is_active {
        return render_error(StatusCode::UNAUTHORIZED, "virtual key is inactive");
    }
    if vk.expired(Utc::now()) {
        return render_error(StatusCode::FORBIDDEN, "virtual key has expired");
    }
    vk.refresh(Utc::now());
    if vk.budgets.iter().any(|b| b.current_usage >= b.max_limit) {
        return render_error(StatusCode::TOO_MANY_REQUESTS, "virtual key budget exceeded");
    }
    if let Some(rl) = &mut vk.rate_limit {
        if rl
            .request_max_limit
            .is_some_and(|m| rl.request_current_usage >= m)
        {
            return render_error(
                StatusCode::TOO_MANY_REQUESTS,
                "virtual key request rate limit exceeded",
            );
        }
        rl.request_current_usage += 1;
    }
    let data: Vec<Value> = vk
        .provider_configs
        .iter()
        .flat_map(|c| {
            c.allowed_models.iter().map(move |m| {
                json!({ "id": format!("{}/{m}", c.provider), "object": "model", "owned_by": c.provider })
            })
        })
        .collect();
    ok(json!({ "object": "list", "data": data }))
}

pub(super) async fn quota(State(emu): State<Arc<Emu>>, headers: HeaderMap) -> Response {
    let Some(value) = presented_vk(&headers) else {
        return render_error(StatusCode::UNAUTHORIZED, "virtual key is required");
    };
    let mut guard = emu.db.lock().unwrap();
    let db = &mut *guard;
    let Some(vk) = db.vks.iter_mut().find(|v| v.value == value) else {
        return render_error(StatusCode::UNAUTHORIZED, "invalid virtual key");
    };
    if vk.expired(Utc::now()) {
        return render_error(StatusCode::FORBIDDEN, "virtual key has expired");
    }
    vk.refresh(Utc::now());
    // As the published `VirtualKeyQuotaResponse`: budgets with their per-model spend (none
    // here: no logging plugin), provider configs with `keys` always null, model configs [].
    let budgets: Vec<Value> = vk
        .budgets
        .iter()
        .map(|b| {
            let mut v = b.json();
            v["per_model_usage"] = json!([]);
            v
        })
        .collect();
    let mut pcs = vk.json(false, false, &db.pkeys)["provider_configs"].take();
    if let Some(list) = pcs.as_array_mut() {
        for c in list {
            c["keys"] = Value::Null;
        }
    }
    ok(json!({
        "virtual_key_id": vk.id,
        "virtual_key_name": vk.name,
        "is_active": vk.is_active,
        "budgets": budgets,
        "rate_limit": vk.rate_limit.as_ref().map(RateLimit::json),
        "provider_configs": pcs,
        "model_configs": [],
    }))
}
