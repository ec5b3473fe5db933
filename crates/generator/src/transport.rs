//! The rule that protects callers from paying twice, written once: did a request that got no
//! (complete) answer reach the provider, and may it be sent again?
//!
//! - Refused before anything was sent (connect failed): nothing happened at the provider;
//!   [`GenError::Transient`], always safe to retry.
//! - The request could not even be built (a header value the client refuses): it never left,
//!   and building it again fails the same way; [`GenError::Permanent`].
//! - Sent and then lost (timeout, reset, a body cut short): a read can be asked again
//!   ([`GenError::Transient`]); a request that may create billable work has an unknown outcome
//!   ([`GenError::UnknownOutcome`]), which the engine resends only with an idempotency key.
//!
//! Every adapter maps its transport failures through [`request_failed`] and [`body_lost`].

use crate::error::GenError;

/// What repeating a request could do at the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// A read (a poll, a status GET): repeating it changes nothing.
    Read,
    /// It may create or change billable work (a submit, a cancel, an edit).
    Write,
}

/// A request that got no HTTP answer at all.
pub fn request_failed(provider: &str, err: reqwest::Error, effect: Effect) -> GenError {
    // reqwest errors name the URL, never request headers, so a key cannot leak through them.
    if err.is_builder() {
        return GenError::Permanent {
            message: format!("could not build the request to {provider}: {err}"),
            provider_code: String::new(),
        };
    }
    if err.is_connect() {
        return GenError::transient_from(format!("could not connect to {provider}"), err);
    }
    match effect {
        Effect::Read => GenError::transient_from(format!("{provider}'s answer was lost"), err),
        Effect::Write => GenError::unknown_outcome_from(
            format!("{provider} may have received the request, but its answer was lost"),
            err,
        ),
    }
}

/// The status line arrived but the body did not: a success to a write still means the work
/// exists; anything else can be asked again.
pub fn body_lost(provider: &str, success: bool, err: reqwest::Error, effect: Effect) -> GenError {
    if success && effect == Effect::Write {
        GenError::unknown_outcome_from(
            format!("lost the body of {provider}'s answer to an accepted request"),
            err,
        )
    } else {
        GenError::transient_from(format!("lost the body of {provider}'s answer"), err)
    }
}
