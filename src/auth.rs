//! Caller authentication: `authorization: Bearer <token>` against `ADGATE_AUTH_TOKENS`,
//! compared in constant time, and the caller's name it yields (a [`Caller`] request
//! extension): `name:token` entries name their caller, a bare token is named after a short
//! hash of itself, and without tokens every call is the caller `anonymous`. Installed per
//! service (health and reflection stay open).

use std::sync::Arc;

use subtle::{Choice, ConstantTimeEq};
use tonic::{Request, Status};

use crate::config::Secret;
use crate::errors::ApiError;

/// The caller a request was authenticated as; names appear in logs, metrics and on jobs, the
/// token never does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub String);

impl Caller {
    pub fn anonymous() -> Self {
        Caller(adgate_engine::ANONYMOUS.to_owned())
    }

    /// The caller of `req`, as the interceptor recorded it.
    pub fn of<T>(req: &Request<T>) -> Caller {
        req.extensions()
            .get::<Caller>()
            .cloned()
            .unwrap_or_else(Caller::anonymous)
    }
}

/// One configured token and the caller it names.
#[derive(Clone)]
pub struct NamedToken {
    pub caller: String,
    pub token: Secret,
}

impl NamedToken {
    /// `name:token`, or a bare `token` (named `caller-<8 hex of its SHA-256>`). A name is 1–63
    /// of `a-z 0-9 - _ .`; anything else before a colon is part of the token.
    pub fn parse(entry: &str) -> NamedToken {
        if let Some((name, token)) = entry.split_once(':')
            && is_caller_name(name)
            && !token.trim().is_empty()
        {
            return NamedToken {
                caller: name.to_owned(),
                token: Secret::new(token.trim()),
            };
        }
        NamedToken {
            caller: hashed_name(entry),
            token: Secret::new(entry),
        }
    }
}

/// Whether `name` may name a caller. `anonymous` is reserved for calls without auth (it sees
/// every job in ListJobs), so no token can take it.
pub fn is_caller_name(name: &str) -> bool {
    name != adgate_engine::ANONYMOUS
        && (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

fn hashed_name(token: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(token.as_bytes());
    format!("caller-{}", hex::encode(&digest[..4]))
}

/// The configured caller tokens. Empty = authentication is off.
#[derive(Clone, Default)]
pub struct Tokens(Arc<[NamedToken]>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.0.len())
    }
}

impl Tokens {
    pub fn new(tokens: Vec<NamedToken>) -> Self {
        Self(tokens.into())
    }

    /// Unnamed tokens (each named after its hash), as tests configure them.
    pub fn unnamed(tokens: Vec<Secret>) -> Self {
        Self(
            tokens
                .into_iter()
                .map(|t| NamedToken {
                    caller: hashed_name(t.expose()),
                    token: t,
                })
                .collect::<Vec<_>>()
                .into(),
        )
    }

    pub fn enabled(&self) -> bool {
        !self.0.is_empty()
    }

    /// Check an `authorization` header value; the caller it names.
    pub fn check(&self, header: Option<&[u8]>) -> Result<Caller, ApiError> {
        if !self.enabled() {
            return Ok(Caller::anonymous());
        }
        let header = header.ok_or(ApiError::MissingCredentials)?;
        let token = bearer(header).ok_or(ApiError::InvalidCredentials)?;
        // Compare against every token so timing does not reveal which one (or how many) matched.
        let mut matched: Option<&NamedToken> = None;
        let mut any = Choice::from(0);
        for t in self.0.iter() {
            let eq = t.token.expose().as_bytes().ct_eq(token);
            if matched.is_none() && bool::from(eq) {
                matched = Some(t);
            }
            any |= eq;
        }
        match (bool::from(any), matched) {
            (true, Some(t)) => Ok(Caller(t.caller.clone())),
            _ => Err(ApiError::InvalidCredentials),
        }
    }

    /// Whether `token` is one of the configured tokens (constant time).
    pub fn matches(&self, token: &[u8]) -> bool {
        self.any(|t| t.ct_eq(token))
    }

    /// Whether `test` holds for some configured token. Every token is tested, so timing does
    /// not reveal which one (or how many) matched; `test` must itself be constant time.
    pub(crate) fn any(&self, test: impl Fn(&[u8]) -> Choice) -> bool {
        self.caller_where(test).is_some()
    }

    /// The caller of the first configured token `test` holds for (every token is tested, as
    /// in [`Tokens::any`]).
    pub(crate) fn caller_where(&self, test: impl Fn(&[u8]) -> Choice) -> Option<Caller> {
        let mut matched: Option<&NamedToken> = None;
        for t in self.0.iter() {
            let eq = test(t.token.expose().as_bytes());
            if matched.is_none() && bool::from(eq) {
                matched = Some(t);
            }
        }
        matched.map(|t| Caller(t.caller.clone()))
    }

    /// The tonic interceptor.
    pub fn interceptor(self) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
        move |req: Request<()>| {
            let mut req = req;
            let header = req.metadata().get("authorization").map(|v| v.as_bytes());
            let caller = self.check(header).map_err(Status::from)?;
            req.extensions_mut().insert(caller);
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
        let t = Tokens::unnamed(vec![Secret::new("alpha"), Secret::new("beta")]);
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
        assert_eq!(Tokens::default().check(None).unwrap(), Caller::anonymous());
    }

    #[test]
    fn named_tokens_name_their_caller() {
        let t = Tokens::new(
            ["team-a:tok-a", "tok-plain", "Not A Name:tok:x"]
                .into_iter()
                .map(NamedToken::parse)
                .collect(),
        );
        assert_eq!(t.check(Some(b"Bearer tok-a")).unwrap().0, "team-a");
        let plain = t.check(Some(b"Bearer tok-plain")).unwrap().0;
        assert!(plain.starts_with("caller-") && plain.len() == 15, "{plain}");
        assert!(!plain.contains("tok"));
        // A prefix that is no caller name stays part of the token.
        assert!(t.check(Some(b"Bearer Not A Name:tok:x")).is_ok());
        // Nobody authenticates as the anonymous caller.
        let reserved = Tokens::new(vec![NamedToken::parse("anonymous:tok-x")]);
        assert_ne!(
            reserved.check(Some(b"Bearer anonymous:tok-x")).unwrap().0,
            "anonymous"
        );
        assert!(t.check(Some(b"Bearer tok-b")).is_err());
        assert!(t.check(Some(b"Bearer team-a:tok-a")).is_err());
    }

    #[test]
    fn interceptor_rejects_with_unauthenticated() {
        let mut i = Tokens::unnamed(vec![Secret::new("s3cret")]).interceptor();
        let err = i(Request::new(())).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert!(!err.message().contains("s3cret"));
        let mut req = Request::new(());
        req.metadata_mut().insert(
            "authorization",
            tonic::metadata::MetadataValue::from_static("Bearer s3cret"),
        );
        let ok = i(req).unwrap();
        assert!(
            ok.extensions()
                .get::<Caller>()
                .unwrap()
                .0
                .starts_with("caller-")
        );
    }
}
