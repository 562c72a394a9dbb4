//! Providers and provider keys: `/api/providers[/{provider}[/keys[/{key_id}]]]`, `GET /api/keys`.

use super::*;

// ---- providers -----------------------------------------------------------------------------

pub(super) fn no_provider(p: &str) -> Response {
    render_error(StatusCode::NOT_FOUND, &format!("Provider not found: {p}"))
}

pub(super) fn keys_in_payload(o: &Map<String, Value>) -> bool {
    o.get("keys")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
}

pub(super) const KEYS_REJECTED: &str = "keys are not accepted on this endpoint; use POST/PUT /api/providers/{provider}/keys to manage provider keys";

pub(super) async fn list_providers(State(emu): State<Arc<Emu>>) -> Response {
    let db = emu.db.lock().unwrap();
    let list: Vec<Value> = db.providers.iter().map(|p| json!({ "name": p })).collect();
    ok(json!({ "providers": list, "total": list.len() }))
}

pub(super) async fn add_provider(State(emu): State<Arc<Emu>>, body: Bytes) -> Response {
    let o = match parse_body(&body) {
        Ok(o) => o,
        Err(e) => return bad(e),
    };
    if keys_in_payload(&o) {
        return bad(KEYS_REJECTED);
    }
    let Some(name) = o
        .get("provider")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    else {
        return bad("provider is required");
    };
    let mut db = emu.db.lock().unwrap();
    if !db.providers.insert(name.to_string()) {
        return render_error(
            StatusCode::CONFLICT,
            &format!("Provider {name} already exists"),
        );
    }
    ok(json!({ "name": name }))
}

pub(super) async fn get_provider(State(emu): State<Arc<Emu>>, Path(p): Path<String>) -> Response {
    if !emu.db.lock().unwrap().providers.contains(&p) {
        return no_provider(&p);
    }
    ok(json!({ "name": p }))
}

pub(super) async fn update_provider(
    State(emu): State<Arc<Emu>>,
    Path(p): Path<String>,
    body: Bytes,
) -> Response {
    let o = match parse_body(&body) {
        Ok(o) => o,
        Err(e) => return bad(e),
    };
    if !emu.db.lock().unwrap().providers.contains(&p) {
        return no_provider(&p);
    }
    if keys_in_payload(&o) {
        return bad(KEYS_REJECTED);
    }
    ok(json!({ "name": p }))
}

pub(super) async fn delete_provider(
    State(emu): State<Arc<Emu>>,
    Path(p): Path<String>,
) -> Response {
    let mut db = emu.db.lock().unwrap();
    if !db.providers.remove(&p) {
        return no_provider(&p);
    }
    db.pkeys.retain(|k| k.provider != p);
    ok(json!({ "message": format!("Provider {p} deleted successfully") }))
}

// ---- provider keys -------------------------------------------------------------------------

/// Build a provider key from a request body (`old`: the stored key on update).
pub(super) fn parse_pkey(
    o: &Map<String, Value>,
    provider: &str,
    id: String,
    old: Option<&PKey>,
) -> Result<PKey, String> {
    let name = opt_str(o.get("name"), "name")?.unwrap_or_default();
    if name.trim().is_empty() {
        return Err("Key name is required".into());
    }
    let mut value = parse_envvar(o.get("value"))?;
    if !value.from_env && is_redacted(&value.value) {
        if let Some(old) = old {
            value = old.value.clone();
        }
    }
    if !value.from_env && value.value.trim().is_empty() {
        return Err("Key value must not be empty".into());
    }
    let weight = opt_f64(o.get("weight"), "weight")?.unwrap_or(1.0);
    if weight < 0.0 {
        return Err("Key weight must be non-negative".into());
    }
    let mut configs = Map::new();
    for k in CONFIG_KEYS {
        match o.get(*k) {
            None | Some(Value::Null) => {}
            Some(c @ Value::Object(_)) => {
                let merged = merge_config(c, old.and_then(|p| p.configs.get(*k)));
                configs.insert(k.to_string(), merged);
            }
            Some(_) => return Err(format!("{k} must be an object")),
        }
    }
    let aliases = match o.get("aliases") {
        None | Some(Value::Null) => None,
        Some(a @ Value::Object(m)) => {
            if m.values().any(|v| !v.is_string()) {
                return Err("aliases must map model names to strings".into());
            }
            Some(a.clone())
        }
        Some(_) => return Err("aliases must be an object".into()),
    };
    let at = now();
    Ok(PKey {
        provider: provider.to_string(),
        id,
        name,
        value,
        models: strings(o.get("models"), "models")?,
        blacklisted_models: strings(o.get("blacklisted_models"), "blacklisted_models")?,
        weight,
        enabled: opt_bool(o.get("enabled"), "enabled")?.unwrap_or(true),
        description: opt_str(o.get("description"), "description")?.unwrap_or_default(),
        status: "success".into(),
        use_for_batch_api: opt_bool(o.get("use_for_batch_api"), "use_for_batch_api")?
            .unwrap_or(false),
        aliases,
        configs,
        created_at: old
            .map(|p| p.created_at.clone())
            .unwrap_or_else(|| at.clone()),
        updated_at: at,
    })
}

pub(super) fn name_taken(db: &Db, name: &str, except_id: &str) -> Option<Response> {
    db.pkeys
        .iter()
        .find(|k| k.name == name && k.id != except_id)
        .map(|k| {
            render_error(
                StatusCode::CONFLICT,
                &format!(
                    "API key names must be unique across providers: '{name}' is already used by a key of provider {}",
                    k.provider
                ),
            )
        })
}

pub(super) async fn list_pkeys(State(emu): State<Arc<Emu>>, Path(p): Path<String>) -> Response {
    let db = emu.db.lock().unwrap();
    if !db.providers.contains(&p) {
        return no_provider(&p);
    }
    let keys: Vec<Value> = db
        .pkeys
        .iter()
        .filter(|k| k.provider == p)
        .map(PKey::json)
        .collect();
    ok(json!({ "keys": keys, "total": keys.len() }))
}

pub(super) async fn get_pkey(
    State(emu): State<Arc<Emu>>,
    Path((p, id)): Path<(String, String)>,
) -> Response {
    let db = emu.db.lock().unwrap();
    if !db.providers.contains(&p) {
        return no_provider(&p);
    }
    match db.pkeys.iter().find(|k| k.provider == p && k.id == id) {
        Some(k) => ok(k.json()),
        None => render_error(
            StatusCode::NOT_FOUND,
            &format!("Provider key not found: {id}"),
        ),
    }
}

pub(super) async fn create_pkey(
    State(emu): State<Arc<Emu>>,
    Path(p): Path<String>,
    body: Bytes,
) -> Response {
    let o = match parse_body(&body) {
        Ok(o) => o,
        Err(e) => return bad(e),
    };
    let mut db = emu.db.lock().unwrap();
    if !db.providers.contains(&p) {
        return no_provider(&p);
    }
    let id = match opt_str(o.get("id"), "id") {
        Ok(Some(id)) if !id.trim().is_empty() => id,
        Ok(_) => uuid::Uuid::new_v4().to_string(),
        Err(e) => return bad(e),
    };
    let mut key = match parse_pkey(&o, &p, id.clone(), None) {
        Ok(k) => k,
        Err(e) => return bad(e),
    };
    if db.pkeys.iter().any(|k| k.id == id) {
        return render_error(
            StatusCode::CONFLICT,
            &format!("A key with id '{id}' already exists"),
        );
    }
    if let Some(r) = name_taken(&db, &key.name, &id) {
        return r;
    }
    key.list_models(emu.list_models_fails);
    let out = key.json();
    db.pkeys.push(key);
    ok(out)
}

pub(super) async fn update_pkey(
    State(emu): State<Arc<Emu>>,
    Path((p, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let o = match parse_body(&body) {
        Ok(o) => o,
        Err(e) => return bad(e),
    };
    let mut db = emu.db.lock().unwrap();
    if !db.providers.contains(&p) {
        return no_provider(&p);
    }
    let Some(pos) = db.pkeys.iter().position(|k| k.provider == p && k.id == id) else {
        return render_error(
            StatusCode::NOT_FOUND,
            &format!("Provider key not found: {id}"),
        );
    };
    match opt_str(o.get("id"), "id") {
        Ok(Some(body_id)) if !body_id.is_empty() && body_id != id => {
            return bad("the key id in the body does not match the path")
        }
        Err(e) => return bad(e),
        _ => {}
    }
    let mut key = match parse_pkey(&o, &p, id.clone(), Some(&db.pkeys[pos])) {
        Ok(k) => k,
        Err(e) => return bad(e),
    };
    if let Some(r) = name_taken(&db, &key.name, &id) {
        return r;
    }
    key.list_models(emu.list_models_fails);
    let out = key.json();
    db.pkeys[pos] = key;
    ok(out)
}

pub(super) async fn delete_pkey(
    State(emu): State<Arc<Emu>>,
    Path((p, id)): Path<(String, String)>,
) -> Response {
    let mut db = emu.db.lock().unwrap();
    if !db.providers.contains(&p) {
        return no_provider(&p);
    }
    match db.pkeys.iter().position(|k| k.provider == p && k.id == id) {
        Some(pos) => ok(db.pkeys.remove(pos).json()),
        None => render_error(
            StatusCode::NOT_FOUND,
            &format!("Provider key not found: {id}"),
        ),
    }
}

pub(super) async fn flat_keys(State(emu): State<Arc<Emu>>) -> Response {
    let db = emu.db.lock().unwrap();
    ok(Value::Array(db.pkeys.iter().map(PKey::flat_row).collect()))
}

pub(super) async fn flat_keys_read_only() -> Response {
    render_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method not allowed: /api/keys is read-only; manage keys under /api/providers/{provider}/keys",
    )
}
