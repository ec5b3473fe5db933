//! `GET /outputs/{job id}/{output index}`: a stored output (output custody), streamed from the
//! output store with the media type read from its bytes.
//!
//! Under the same bearer tokens as the gRPC API: without a valid token 401; a named caller
//! reads only its own jobs (another caller's job is answered 404, as if unknown); with auth off
//! the route is open. `stored_url` on a job's outputs is this route's URL; it does not expire
//! (the copy is kept as long as the store keeps it) and needs the caller's token.

use adgate_engine::{Engine, OutputStoreError};
use adgate_generator::CustodyState;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;

use crate::auth::Tokens;

#[derive(Clone)]
pub struct OutputsState {
    pub engine: Engine,
    pub tokens: Tokens,
}

fn plain(status: StatusCode, message: &'static str) -> Response {
    (status, message).into_response()
}

pub async fn get_output(
    State(st): State<OutputsState>,
    Path((job_id, index)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let caller = match st.tokens.check(
        headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes),
    ) {
        Ok(caller) => caller,
        Err(_) => {
            let mut r = plain(
                StatusCode::UNAUTHORIZED,
                "a valid bearer token is required\n",
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    };
    let Some(store) = st.engine.output_store() else {
        return plain(StatusCode::NOT_FOUND, "output custody is off\n");
    };
    let Ok(index) = index.parse::<usize>() else {
        return plain(StatusCode::NOT_FOUND, "no such output\n");
    };
    if job_id.is_empty() || job_id.len() > 128 {
        return plain(StatusCode::NOT_FOUND, "no such output\n");
    }
    let job = match st.engine.get_jobs(std::slice::from_ref(&job_id)).await {
        Ok((mut jobs, _)) => jobs.pop(),
        Err(e) => {
            tracing::warn!(error = %e, "reading a job for a stored output failed");
            return plain(StatusCode::SERVICE_UNAVAILABLE, "try again later\n");
        }
    };
    let visible = job.filter(|j| caller.0 == adgate_engine::ANONYMOUS || j.caller == caller.0);
    let Some(output) = visible.as_ref().and_then(|j| j.outputs.get(index)) else {
        return plain(StatusCode::NOT_FOUND, "no such output\n");
    };
    if output.custody.state != CustodyState::Stored {
        return plain(
            StatusCode::NOT_FOUND,
            "this output has no stored copy (yet)\n",
        );
    }
    let object = match store.get(&output.custody.key).await {
        Ok(object) => object,
        Err(OutputStoreError::NotFound(_)) => {
            tracing::warn!(job_id = %job_id, index, "a stored output is missing from the store");
            return plain(StatusCode::NOT_FOUND, "the stored copy is missing\n");
        }
        Err(e) => {
            tracing::warn!(job_id = %job_id, index, error = %e, "reading a stored output failed");
            return plain(StatusCode::BAD_GATEWAY, "the output store failed\n");
        }
    };
    let mime = HeaderValue::from_str(&output.custody.mime_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let body = Body::from_stream(object.bytes.map_err(std::io::Error::other));
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, mime);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(object.size));
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", output.custody.sha256)) {
        h.insert(header::ETAG, etag);
    }
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=3600"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}
