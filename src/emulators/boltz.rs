//! Boltz emulator (placeholder until the provider lands).

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use axum::Router;

use super::{json_response, FaultArgs, Faults};

/// Flags of `keysmith emulate boltz`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[command(flatten)]
    pub faults: FaultArgs,
}

fn render_error(status: StatusCode, message: &str) -> Response {
    json_response(status, serde_json::json!({ "error": message }))
}

pub fn build(args: &Args) -> (Router, Arc<Faults>) {
    (
        Router::new(),
        Faults::new(args.faults.clone(), render_error),
    )
}
