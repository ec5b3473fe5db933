//! The web console on the HTTP listener, under `/ui`: a batches list, a batch page with a
//! live grid of job cards (thumbnails, state, progress, errors), and a provider page (budget,
//! queue, ETA, in-flight jobs, webhook counters).
//!
//! Server-rendered HTML ([`pages`]) plus one small script that polls the JSON in [`api`] every
//! second; the script and stylesheet are compiled into the binary (no CDN, no build step).
//! With caller tokens configured every route but sign-in and the assets needs the session
//! cookie that [`session`] sets.

pub mod api;
mod counters;
mod listing;
pub mod pages;
pub mod session;

use std::sync::Arc;

use adgate_engine::Engine;
use axum::Router;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus_client::registry::Registry;

use crate::auth::{Caller, Tokens};

const SCRIPT: &str = include_str!("assets/console.js");
const STYLE: &str = include_str!("assets/console.css");

/// What the console reads: the engine, the caller tokens and the metrics registry.
#[derive(Clone)]
pub struct ConsoleState {
    pub engine: Engine,
    pub tokens: Tokens,
    pub registry: Arc<Registry>,
}

impl std::fmt::Debug for ConsoleState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleState")
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

/// The `/ui` routes, ready to merge into the HTTP router.
pub fn router(state: ConsoleState) -> Router {
    let guarded = Router::new()
        .route("/ui", get(batches_page))
        .route("/ui/", get(batches_page))
        .route("/ui/batches/{id}", get(batch_page))
        .route("/ui/open", get(open_batch))
        .route("/ui/providers", get(providers_page))
        .route("/ui/api/batches", get(api::batches))
        .route("/ui/api/batches/{id}", get(api::batch))
        .route("/ui/api/providers", get(api::providers))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            session::require,
        ));
    Router::new()
        .merge(guarded)
        .route("/ui/login", get(session::login_form).post(session::login))
        .route("/ui/logout", post(session::logout))
        .route("/ui/assets/console.js", get(script))
        .route("/ui/assets/console.css", get(style))
        .with_state(state)
}

async fn script() -> Response {
    pages::with_headers(
        StatusCode::OK,
        "text/javascript; charset=utf-8",
        SCRIPT.to_owned(),
    )
}

async fn style() -> Response {
    pages::with_headers(StatusCode::OK, "text/css; charset=utf-8", STYLE.to_owned())
}

async fn batches_page(
    State(state): State<ConsoleState>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let signed_in = state.tokens.enabled();
    let (rows, note) = listing::recent(&state.engine, &caller).await;
    pages::batches(&rows, &note, signed_in)
}

#[derive(Debug, serde::Deserialize)]
struct OpenQuery {
    #[serde(default)]
    batch: String,
}

/// `GET /ui/open?batch=ID`: the list page's "open a batch" form. Ids are `bat_` + hex; anything
/// else is answered on the list page rather than put into a URL.
async fn open_batch(
    State(state): State<ConsoleState>,
    axum::extract::Query(q): axum::extract::Query<OpenQuery>,
) -> Response {
    let id = q.batch.trim();
    if !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return axum::response::Redirect::to(&format!("/ui/batches/{id}")).into_response();
    }
    pages::not_found(
        &format!("{id:?} is not a batch id (bat_…)."),
        state.tokens.enabled(),
    )
}

async fn batch_page(
    State(state): State<ConsoleState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let signed_in = state.tokens.enabled();
    match api::batch_view(&state.engine, &caller, &id, None).await {
        Ok(Some(v)) => pages::batch(&v, signed_in),
        Ok(None) => pages::not_found(&format!("No batch {id:?}."), signed_in),
        Err(e) => {
            tracing::warn!(error = %e, "console: reading the store failed");
            pages::unavailable(signed_in)
        }
    }
}

async fn providers_page(State(state): State<ConsoleState>) -> Response {
    let views = api::provider_views(&state).await;
    pages::providers(&views, state.tokens.enabled())
}
