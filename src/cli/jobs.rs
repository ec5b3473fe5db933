//! `adgate jobs [--filter F]`: the gateway's jobs, newest first, through ListJobs pages
//! (AIP-132; the filter is AIP-160, passed through as written).

use serde_json::json;

use super::output;
use super::pbjson;
use super::{EXIT_OK, Failure, JobsArgs};
use crate::pb;

/// Largest page the gateway serves.
const MAX_PAGE: u32 = 1000;

pub async fn run(args: JobsArgs) -> Result<u8, Failure> {
    let mut client = super::client(&args.conn)?;
    let mut token = String::new();
    let mut shown: u32 = 0;
    loop {
        let want = if args.limit == 0 {
            MAX_PAGE
        } else {
            (args.limit - shown).min(MAX_PAGE)
        };
        let page = client
            .list_jobs(pb::ListJobsRequest {
                page_size: i32::try_from(want).unwrap_or(i32::MAX),
                page_token: token.clone(),
                filter: args.filter.clone(),
            })
            .await
            .map_err(|st| {
                if st.code() == tonic::Code::Unimplemented {
                    Failure::gateway(format!(
                        "this gateway does not offer ListJobs yet ({})",
                        st.message()
                    ))
                } else {
                    Failure::rpc("ListJobs", &st)
                }
            })?
            .into_inner();
        for job in &page.jobs {
            if args.conn.json {
                output::emit(&json!({"job": pbjson::job_json(job)}));
            } else {
                output::line(&output::job_line(job));
            }
        }
        // A short page is still not the end; only an empty token is.
        shown = shown.saturating_add(u32::try_from(page.jobs.len()).unwrap_or(u32::MAX));
        if page.next_page_token.is_empty() || (args.limit != 0 && shown >= args.limit) {
            break;
        }
        token = page.next_page_token;
    }
    // Listing is not an outcome: the exit code only says the gateway answered.
    Ok(EXIT_OK)
}
