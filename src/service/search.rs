//! ListJobs and ListBatches: filter parsing, per-caller visibility, page tokens, then one
//! engine read per page.

use tonic::Request;

use super::Gateway;
use crate::auth::Caller;
use crate::errors::{ApiError, Violation};
use crate::{convert, filter, page_token, pb};

/// Page size when the request leaves it 0 (AIP-158).
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Larger page sizes are served as this many.
pub const MAX_PAGE_SIZE: usize = 1_000;

fn page_size(requested: i32) -> Result<usize, ApiError> {
    match usize::try_from(requested) {
        Ok(0) => Ok(DEFAULT_PAGE_SIZE),
        Ok(n) => Ok(n.min(MAX_PAGE_SIZE)),
        Err(_) => Err(ApiError::InvalidRequest(vec![Violation::new(
            "page_size",
            "must not be negative",
        )])),
    }
}

/// Narrows a filter's callers to what `caller` may see. Without authentication every call is
/// `anonymous` and sees everything. A named caller sees only its own jobs and batches; a
/// `caller` filter naming anyone else is PERMISSION_DENIED rather than an empty page: the
/// stricter reading, which tells a caller plainly that it asked for data it cannot have
/// instead of letting a wrong name pass for "no jobs".
fn restrict(caller: &Caller, callers: &mut Vec<String>) -> Result<(), ApiError> {
    if caller.0 == adgate_engine::ANONYMOUS {
        return Ok(());
    }
    if let Some(other) = callers.iter().find(|c| **c != caller.0) {
        tracing::debug!(caller = %caller.0, asked = %other, "list refused: another caller");
        return Err(ApiError::OtherCallerData {
            caller: caller.0.clone(),
        });
    }
    if callers.is_empty() {
        callers.push(caller.0.clone());
    }
    Ok(())
}

impl Gateway {
    pub(super) async fn list_jobs_inner(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<pb::ListJobsResponse, ApiError> {
        let caller = Caller::of(&req);
        let req = req.into_inner();
        let limit = page_size(req.page_size)?;
        let mut f = filter::job_filter(&req.filter)?;
        restrict(&caller, &mut f.callers)?;
        let scope = page_token::scope("jobs", &f);
        let after = page_token::decode(&req.page_token, &scope)?;
        let page = self.engine.list_jobs(&f, after.as_ref(), limit).await?;
        Ok(pb::ListJobsResponse {
            jobs: page.items.iter().map(|r| self.job(r)).collect(),
            next_page_token: page
                .next
                .map(|k| page_token::encode(&k, &scope))
                .unwrap_or_default(),
        })
    }

    pub(super) async fn list_batches_inner(
        &self,
        req: Request<pb::ListBatchesRequest>,
    ) -> Result<pb::ListBatchesResponse, ApiError> {
        let caller = Caller::of(&req);
        let req = req.into_inner();
        let limit = page_size(req.page_size)?;
        let mut f = filter::batch_filter(&req.filter)?;
        restrict(&caller, &mut f.callers)?;
        let scope = page_token::scope("batches", &f);
        let after = page_token::decode(&req.page_token, &scope)?;
        let page = self.engine.list_batches(&f, after.as_ref(), limit).await?;
        Ok(pb::ListBatchesResponse {
            batches: page
                .items
                .iter()
                .map(|b| pb::Batch {
                    id: b.id.clone(),
                    caller: b.caller.clone(),
                    create_time: Some(convert::timestamp(b.created_at_ms)),
                    job_count: i32::try_from(b.job_count).unwrap_or(i32::MAX),
                    counts: b
                        .counts
                        .iter()
                        .map(|(s, n)| pb::StateCount {
                            state: convert::state(*s).into(),
                            count: i32::try_from(*n).unwrap_or(i32::MAX),
                        })
                        .collect(),
                    cost: convert::costs(&b.cost),
                })
                .collect(),
            next_page_token: page
                .next
                .map(|k| page_token::encode(&k, &scope))
                .unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn named_callers_see_only_their_own() {
        let mut callers = Vec::new();
        restrict(&Caller::anonymous(), &mut callers).unwrap();
        assert!(callers.is_empty(), "without auth everything is visible");
        restrict(&Caller("team-a".into()), &mut callers).unwrap();
        assert_eq!(callers, vec!["team-a"]);
        let mut other = vec!["team-b".to_owned()];
        assert!(matches!(
            restrict(&Caller("team-a".into()), &mut other),
            Err(ApiError::OtherCallerData { .. })
        ));
    }

    #[test]
    fn page_sizes() {
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(7).unwrap(), 7);
        assert_eq!(page_size(5_000).unwrap(), MAX_PAGE_SIZE);
        assert!(page_size(-1).is_err());
    }
}
