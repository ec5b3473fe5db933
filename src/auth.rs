//! Caller authentication: `authorization: Bearer <token>` against `ADGATE_AUTH_TOKENS`,
//! compared in constant time. Installed per service (health and reflection stay open).

use std::sync::Arc;

use subtle::{Choice, ConstantTimeEq};
use tonic::{Request, Status};

use crate::config::Secret;
use crate::errors::ApiError;

/// The configured caller tokens. Empty = authentication is off.
#[derive(Clone, Default)]
pub struct Tokens(Arc<[Secret]>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.0.len())
    }
}

impl Tokens {
    pub fn new(tokens: Vec<Secret>) -> Self {
        Self(tokens.into())
    }

    pub fn enabled(&self) -> bool {
        !self.0.is_empty()
    }

    /// Check an `authorization` header value.
    pub fn check(&self, header: Option<&[u8]>) -> Result<(), ApiError> {
        if !self.enabled() {
            return Ok(());
        }
        let header = header.ok_or(ApiError::MissingCredentials)?;
        let token = bearer(header).ok_or(ApiError::InvalidCredentials)?;
        if self.matches(token) {
            Ok(())
        } else {
            Err(ApiError::InvalidCredentials)
        }
    }

    /// Whether `token` is one of the configured tokens (constant time).
    pub fn matches(&self, token: &[u8]) -> bool {
        self.any(|t| t.ct_eq(token))
    }

    /// Whether `test` holds for some configured token. Every token is tested, so timing does
    /// not reveal which one (or how many) matched; `test` must itself be constant time.
    pub(crate) fn any(&self, test: impl Fn(&[u8]) -> Choice) -> bool {
        let ok = self
            .0
            .iter()
            .fold(Choice::from(0), |acc, t| acc | test(t.expose().as_bytes()));
        bool::from(ok)
    }

    /// The tonic interceptor.
    pub fn interceptor(self) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
        move |req: Request<()>| {
            let header = req.metadata().get("authorization").map(|v| v.as_bytes());
            self.check(header).map_err(Status::from)?;
            Ok(req)
        }
    }
}

/// The token of `Bearer <token>` (scheme case-insensitive).
fn bearer(header: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = header.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked() {
        let t = Tokens::new(vec![Secret::new("alpha"), Secret::new("beta")]);
        assert!(t.check(Some(b"Bearer alpha")).is_ok());
        assert!(t.check(Some(b"bearer beta")).is_ok());
        assert!(matches!(t.check(None), Err(ApiError::MissingCredentials)));
        for bad in [
            &b"Bearer gamma"[..],
            b"Bearer alph",
            b"Bearer alphaa",
            b"Basic alpha",
            b"Bearer ",
            b"alpha",
        ] {
            assert!(
                matches!(t.check(Some(bad)), Err(ApiError::InvalidCredentials)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn no_tokens_means_open() {
        assert!(Tokens::default().check(None).is_ok());
    }

    #[test]
    fn interceptor_rejects_with_unauthenticated() {
        let mut i = Tokens::new(vec![Secret::new("s3cret")]).interceptor();
        let err = i(Request::new(())).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert!(!err.message().contains("s3cret"));
        let mut req = Request::new(());
        req.metadata_mut().insert(
            "authorization",
            tonic::metadata::MetadataValue::from_static("Bearer s3cret"),
        );
        assert!(i(req).is_ok());
    }
}
