//! Test control (`/_emulator/…`): no auth, no faults, not counted.

use super::*;

// ---- test control --------------------------------------------------------------------------

pub(super) async fn control_keys(State(emu): State<Arc<Emu>>) -> Response {
    let mut db = emu.db.lock().unwrap();
    let at = Utc::now();
    for vk in &mut db.vks {
        vk.refresh(at);
    }
    let vks: Vec<Value> = db
        .vks
        .iter()
        .map(|v| {
            json!({
                "id": v.id,
                "name": v.name,
                "active": v.is_active,
                "revoked": false,
                "hint": v.hint(),
                "description": v.description,
                "expiresAt": v.expires_at.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true)),
                "rotatedAt": v.rotated_at.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true)),
                "budgets": v.budgets.iter().map(|b| json!({
                    "maxLimit": b.max_limit, "resetDuration": b.reset_duration, "currentUsage": b.current_usage,
                })).collect::<Vec<_>>(),
                "rateLimit": v.rate_limit.as_ref().map(|r| json!({
                    "tokenMaxLimit": r.token_max_limit, "tokenResetDuration": r.token_reset_duration,
                    "tokenCurrentUsage": r.token_current_usage,
                    "requestMaxLimit": r.request_max_limit, "requestResetDuration": r.request_reset_duration,
                    "requestCurrentUsage": r.request_current_usage,
                })),
                "providerConfigs": v.provider_configs.iter().map(|c| json!({
                    "provider": c.provider, "weight": c.weight,
                    "allowedModels": c.allowed_models, "keyIds": c.key_ids,
                })).collect::<Vec<_>>(),
                "createdAt": v.created_at,
                "updatedAt": v.updated_at,
            })
        })
        .collect();
    let pks: Vec<Value> = db
        .pkeys
        .iter()
        .map(|k| {
            json!({
                "provider": k.provider,
                "id": k.id,
                "name": k.name,
                "active": k.enabled,
                "revoked": false,
                "fromEnv": k.value.from_env,
                "models": k.models,
                "weight": k.weight,
                "description": k.description,
                "configs": k.configs.keys().collect::<Vec<_>>(),
                "createdAt": k.created_at,
                "updatedAt": k.updated_at,
            })
        })
        .collect();
    ok(json!({ "virtualKeys": vks, "providerKeys": pks }))
}

pub(super) async fn control_usage(State(emu): State<Arc<Emu>>, body: Bytes) -> Response {
    let o = match parse_body(&body) {
        Ok(o) => o,
        Err(e) => return bad(e),
    };
    let Some(id) = o.get("vkId").and_then(Value::as_str) else {
        return bad("vkId is required");
    };
    let amount = o.get("amount").and_then(Value::as_f64).unwrap_or(0.0);
    let tokens = o.get("tokens").and_then(Value::as_i64).unwrap_or(0);
    let requests = o.get("requests").and_then(Value::as_i64).unwrap_or(0);
    let as_request = o.get("asRequest").and_then(Value::as_bool).unwrap_or(false);
    let mut db = emu.db.lock().unwrap();
    let Some(vk) = db.vks.iter_mut().find(|v| v.id == id) else {
        return no_vk();
    };
    vk.refresh(Utc::now());
    // As inference with the VK (`GET /v1/models`): refused when inactive or when a budget is
    // used up; a request admitted under its budget is counted in full.
    if as_request && !vk.is_active {
        return render_error(StatusCode::UNAUTHORIZED, "virtual key is inactive");
    }
    if as_request && vk.budgets.iter().any(|b| b.current_usage >= b.max_limit) {
        return render_error(StatusCode::TOO_MANY_REQUESTS, "virtual key budget exceeded");
    }
    for b in &mut vk.budgets {
        b.current_usage += amount;
    }
    if let Some(rl) = &mut vk.rate_limit {
        rl.token_current_usage += tokens;
        rl.request_current_usage += requests;
    }
    ok(json!({
        "budgets": vk.budgets.iter().map(Budget::json).collect::<Vec<_>>(),
        "rate_limit": vk.rate_limit.as_ref().map(RateLimit::json),
    }))
}

pub(super) async fn control_check(State(emu): State<Arc<Emu>>, body: Bytes) -> Response {
    let o = match parse_body(&body) {
        Ok(o) => o,
        Err(e) => return bad(e),
    };
    let field = |k: &str| o.get(k).and_then(Value::as_str).unwrap_or("");
    let db = emu.db.lock().unwrap();
    match db
        .pkeys
        .iter()
        .find(|k| k.provider == field("provider") && k.id == field("id"))
    {
        Some(k) => ok(json!({ "matches": k.value.value == field("value") })),
        None => render_error(
            StatusCode::NOT_FOUND,
            &format!("Provider key not found: {}", field("id")),
        ),
    }
}

/// `POST /_emulator/rotate {"vkId"}`: a rotation the key's manager did not ask for (the
/// gateway's scheduled rotation, or an admin in the UI): a new value and `rotated_at`. The new
/// value is not answered (a test finds it where keysmith puts it).
pub(super) async fn control_rotate(State(emu): State<Arc<Emu>>, body: Bytes) -> Response {
    let o = match parse_body(&body) {
        Ok(o) => o,
        Err(e) => return bad(e),
    };
    let id = o.get("vkId").and_then(Value::as_str).unwrap_or("");
    let mut db = emu.db.lock().unwrap();
    match db.vks.iter_mut().find(|v| v.id == id) {
        Some(vk) => {
            vk.rotate();
            ok(
                json!({ "rotatedAt": vk.rotated_at.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true)) }),
            )
        }
        None => no_vk(),
    }
}
