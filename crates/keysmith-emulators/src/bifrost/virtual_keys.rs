//! Virtual keys: `/api/governance/virtual-keys[/{vk_id}[/rotate]]`.

use super::*;

// ---- virtual keys --------------------------------------------------------------------------

pub(super) fn no_vk() -> Response {
    render_error(StatusCode::NOT_FOUND, "Virtual key not found")
}

pub(super) async fn list_vks(State(emu): State<Arc<Emu>>, RawQuery(q): RawQuery) -> Response {
    let params: Vec<(String, String)> =
        url::form_urlencoded::parse(q.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let paginated = [
        "limit", "offset", "search", "org_id", "sort_by", "order", "export",
    ]
    .iter()
    .any(|k| param(k).is_some());
    let mut db = emu.db.lock().unwrap();
    let at = Utc::now();
    for vk in &mut db.vks {
        vk.refresh(at);
    }
    let with_value = !emu.hide_vk_values;
    if !paginated {
        let all: Vec<Value> = db
            .vks
            .iter()
            .map(|v| v.json(with_value, !emu.no_vk_expiry, &db.pkeys))
            .collect();
        // Unpaginated: the whole list is one page.
        return ok(json!({
            "virtual_keys": all,
            "count": all.len(),
            "total_count": all.len(),
            "limit": all.len(),
            "offset": 0,
        }));
    }
    let num = |k: &str| -> Result<Option<usize>, String> {
        match param(k) {
            None => Ok(None),
            Some(v) if v.is_empty() => Ok(None),
            Some(v) => v
                .parse::<usize>()
                .map(Some)
                .map_err(|_| format!("Invalid {k} parameter: must be a non-negative integer")),
        }
    };
    let limit = match num("limit") {
        Ok(l) => l
            .filter(|l| *l > 0)
            .unwrap_or(DEFAULT_PAGE)
            .min(emu.max_page.max(1)),
        Err(e) => return bad(e),
    };
    let offset = match num("offset") {
        Ok(o) => o.unwrap_or(0),
        Err(e) => return bad(e),
    };
    let mut matching: Vec<&Vk> = match param("search").filter(|s| !s.is_empty()) {
        Some(s) => {
            let s = s.to_lowercase();
            db.vks
                .iter()
                .filter(|v| {
                    v.name.to_lowercase().contains(&s) || v.description.to_lowercase().contains(&s)
                })
                .collect()
        }
        None => db.vks.iter().collect(),
    };
    match param("sort_by").as_deref() {
        None | Some("") | Some("created_at") => {}
        Some("name") => matching.sort_by(|a, b| a.name.cmp(&b.name)),
        Some("updated_at") => matching.sort_by(|a, b| a.updated_at.cmp(&b.updated_at)),
        Some(other) => return bad(format!("Invalid sort_by parameter: {other}")),
    }
    match param("order").as_deref() {
        None | Some("") | Some("asc") => {}
        Some("desc") => matching.reverse(),
        Some(other) => return bad(format!("Invalid order parameter: {other}")),
    }
    let total = matching.len();
    let page: Vec<Value> = matching
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|v| v.json(with_value, !emu.no_vk_expiry, &db.pkeys))
        .collect();
    ok(json!({
        "virtual_keys": page,
        "count": page.len(),
        "total_count": total,
        "limit": limit,
        "offset": offset,
    }))
}

pub(super) async fn create_vk(State(emu): State<Arc<Emu>>, body: Bytes) -> Response {
    let o = match parse_body(&body) {
        Ok(o) => o,
        Err(e) => return bad(e),
    };
    let mut db = emu.db.lock().unwrap();
    let vk = match (|| -> Result<Vk, String> {
        let name = opt_str(o.get("name"), "name")?.unwrap_or_default();
        if name.trim().is_empty() {
            return Err("Virtual key name is required".into());
        }
        let team_id = opt_str(o.get("team_id"), "team_id")?;
        let customer_id = opt_str(o.get("customer_id"), "customer_id")?;
        if team_id.is_some() && customer_id.is_some() {
            return Err("team_id and customer_id are mutually exclusive".into());
        }
        let budgets = parse_budgets(&o, "", &mut db.next_id)?.unwrap_or_default();
        let rate_limit = parse_rate_limit(o.get("rate_limit"), "rate_limit")?.flatten();
        let provider_configs =
            parse_provider_configs(o.get("provider_configs"), &mut db)?.unwrap_or_default();
        let expires_at = match emu.no_vk_expiry {
            true => None,
            false => opt_expiry(o.get("expires_at"))?.flatten(),
        };
        let at = now();
        Ok(Vk {
            id: uuid::Uuid::new_v4().to_string(),
            name,
            value: new_vk_value(),
            description: opt_str(o.get("description"), "description")?.unwrap_or_default(),
            is_active: opt_bool(o.get("is_active"), "is_active")?.unwrap_or(true),
            provider_configs,
            budgets,
            rate_limit,
            team_id,
            customer_id,
            calendar_aligned: opt_bool(o.get("calendar_aligned"), "calendar_aligned")?
                .unwrap_or(false),
            created_at: at.clone(),
            updated_at: at,
            expires_at,
            rotated_at: None,
        })
    })() {
        Ok(vk) => vk,
        Err(e) => return bad(e),
    };
    let out = vk.json(true, !emu.no_vk_expiry, &db.pkeys);
    db.vks.push(vk);
    ok(json!({ "message": "Virtual key created successfully", "virtual_key": out }))
}

pub(super) async fn get_vk(State(emu): State<Arc<Emu>>, Path(id): Path<String>) -> Response {
    let mut guard = emu.db.lock().unwrap();
    let db = &mut *guard;
    let Some(vk) = db.vks.iter_mut().find(|v| v.id == id) else {
        return no_vk();
    };
    vk.refresh(Utc::now());
    ok(json!({ "virtual_key": vk.json(!emu.hide_vk_values, !emu.no_vk_expiry, &db.pkeys) }))
}

pub(super) async fn update_vk(
    State(emu): State<Arc<Emu>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let o = match parse_body(&body) {
        Ok(o) => o,
        Err(e) => return bad(e),
    };
    let mut db = emu.db.lock().unwrap();
    let Some(pos) = db.vks.iter().position(|v| v.id == id) else {
        return no_vk();
    };
    let mut vk = db.vks[pos].clone();
    let result = (|| -> Result<(), String> {
        if let Some(name) = opt_str(o.get("name"), "name")? {
            if name.trim().is_empty() {
                return Err("Virtual key name must not be empty".into());
            }
            vk.name = name;
        }
        if let Some(d) = opt_str(o.get("description"), "description")? {
            vk.description = d;
        }
        if let Some(a) = opt_bool(o.get("is_active"), "is_active")? {
            vk.is_active = a;
        }
        if let Some(t) = opt_str(o.get("team_id"), "team_id")? {
            vk.team_id = Some(t);
            vk.customer_id = None;
        }
        if let Some(c) = opt_str(o.get("customer_id"), "customer_id")? {
            if o.get("team_id").is_some_and(|t| !t.is_null()) {
                return Err("team_id and customer_id are mutually exclusive".into());
            }
            vk.customer_id = Some(c);
            vk.team_id = None;
        }
        if let Some(mut b) = parse_budgets(&o, "", &mut db.next_id)? {
            keep_usage(&mut b, &vk.budgets);
            vk.budgets = b;
        }
        match parse_rate_limit(o.get("rate_limit"), "rate_limit")? {
            None => {}
            Some(None) => vk.rate_limit = None,
            Some(Some(mut rl)) => {
                if let Some(old) = &vk.rate_limit {
                    rl.id = old.id.clone();
                    rl.token_current_usage = old.token_current_usage;
                    rl.request_current_usage = old.request_current_usage;
                }
                vk.rate_limit = Some(rl);
            }
        }
        if let Some(pcs) = parse_provider_configs(o.get("provider_configs"), &mut db)? {
            vk.provider_configs = pcs;
        }
        if let Some(c) = opt_bool(o.get("calendar_aligned"), "calendar_aligned")? {
            vk.calendar_aligned = c;
        }
        if !emu.no_vk_expiry {
            if let Some(e) = opt_expiry(o.get("expires_at"))? {
                vk.expires_at = e;
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        return bad(e);
    }
    vk.updated_at = now();
    let out = vk.json(true, !emu.no_vk_expiry, &db.pkeys);
    db.vks[pos] = vk;
    ok(json!({ "message": "Virtual key updated successfully", "virtual_key": out }))
}

pub(super) async fn delete_vk(State(emu): State<Arc<Emu>>, Path(id): Path<String>) -> Response {
    let mut db = emu.db.lock().unwrap();
    let Some(pos) = db.vks.iter().position(|v| v.id == id) else {
        return no_vk();
    };
    db.vks.remove(pos);
    ok(json!({ "message": "Virtual key deleted successfully" }))
}

pub(super) async fn rotate_vk(State(emu): State<Arc<Emu>>, Path(id): Path<String>) -> Response {
    let mut guard = emu.db.lock().unwrap();
    let db = &mut *guard;
    let Some(vk) = db.vks.iter_mut().find(|v| v.id == id) else {
        return no_vk();
    };
    vk.rotate();
    ok(
        json!({ "message": "Virtual key rotated successfully", "virtual_key": vk.json(true, !emu.no_vk_expiry, &db.pkeys) }),
    )
}

pub(super) async fn rotate_vks(State(emu): State<Arc<Emu>>, body: Bytes) -> Response {
    let o = match parse_body(&body) {
        Ok(o) => o,
        Err(e) => return bad(e),
    };
    let ids = match strings(o.get("ids"), "ids") {
        Ok(ids) if !ids.is_empty() => ids,
        Ok(_) => return bad("ids must not be empty"),
        Err(e) => return bad(e),
    };
    let mut db = emu.db.lock().unwrap();
    if let Some(missing) = ids.iter().find(|id| !db.vks.iter().any(|v| &v.id == *id)) {
        return render_error(
            StatusCode::NOT_FOUND,
            &format!("Virtual key not found: {missing}"),
        );
    }
    let db = &mut *db;
    let mut out = Vec::new();
    for vk in db.vks.iter_mut().filter(|v| ids.contains(&v.id)) {
        vk.rotate();
        out.push(vk.json(true, !emu.no_vk_expiry, &db.pkeys));
    }
    ok(json!({ "message": "Virtual keys rotated successfully", "virtual_keys": out }))
}
