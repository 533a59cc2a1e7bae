//! Who is calling: the key of a call, verified, and counted against its
//! rate limits, as extractors.
//!
//! A handler that takes [`Authorized`] (or [`CheckCaller`], or
//! [`Verified`]) as its first argument runs only for a live key; one that
//! takes none is open, and that is visible in its signature.
//!
//! The key travels in the `x-LSQ-AccessKey` and `x-LSQ-SecretKey` headers
//! (recommended: a query string ends up in proxies' and browsers' logs) or
//! in the `accessKey` and `secretKey` query parameters, as the seed's API
//! takes it. A header, when present, is used over the parameter of the same
//! part. Missing parts verify like wrong ones: the same work, the same 401.

use std::borrow::Cow;
use std::time::Instant;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName};

use crate::app::App;
use crate::error::ApiError;

/// The header of the access key.
pub const ACCESS_HEADER: &str = "x-lsq-accesskey";
/// The header of the secret.
pub const SECRET_HEADER: &str = "x-lsq-secretkey";

/// The key's parts as the call gives them: a header over a parameter.
/// Borrowed from the request (no allocation unless a value is
/// percent-encoded): this runs on every check.
fn credentials<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> (Cow<'a, str>, Cow<'a, str>) {
    // Names made once: a lookup by text would parse the name every call.
    static ACCESS: HeaderName = HeaderName::from_static(ACCESS_HEADER);
    static SECRET: HeaderName = HeaderName::from_static(SECRET_HEADER);
    let header = |name: &HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(Cow::Borrowed)
    };
    let (mut access, mut secret) = (header(&ACCESS), header(&SECRET));
    if access.is_none() || secret.is_none() {
        // The first value of each parameter, as `param` takes it.
        let (mut from_query_access, mut from_query_secret) = (None, None);
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*k {
                "accessKey" if from_query_access.is_none() => from_query_access = Some(v),
                "secretKey" if from_query_secret.is_none() => from_query_secret = Some(v),
                _ => {}
            }
        }
        access = access.or(from_query_access);
        secret = secret.or(from_query_secret);
    }
    (access.unwrap_or_default(), secret.unwrap_or_default())
}

/// Which budget a call spends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Budget {
    /// The key's calls: the seed's 25 in 5 s.
    Calls,
    /// The key's batch calls (a share or revoke of more than one item),
    /// limited apart.
    Batches,
}

impl App {
    /// The access key of a call whose key is live, or the 401.
    fn verify<'a>(&self, parts: &'a Parts) -> Result<Cow<'a, str>, ApiError> {
        let (access, secret) = credentials(&parts.headers, parts.uri.query());
        if !self.inner.keys.verify(&access, &secret) {
            metrics::counter!("grantwheel_unauthorized_total").increment(1);
            return Err(ApiError::unauthorized());
        }
        Ok(access)
    }

    /// Count a call of `access` against `budget`, or the 429.
    pub(crate) fn admit(&self, access: &str, budget: Budget) -> Result<(), ApiError> {
        let limiter = match budget {
            Budget::Calls => &self.inner.limiter,
            Budget::Batches => &self.inner.batch_limiter,
        };
        limiter.admit(access, Instant::now()).map_err(|wait| {
            metrics::counter!("grantwheel_rate_limited_total").increment(1);
            let (max, window) = limiter.limit();
            let what = match budget {
                Budget::Calls => "API calls",
                Budget::Batches => "Batch calls (of more than one item)",
            };
            ApiError::too_many(what, max, window.as_secs().max(1), wait)
        })
    }
}

/// A call whose key is live and within its calls' limit.
#[derive(Debug)]
pub struct Authorized;

impl FromRequestParts<App> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, ApiError> {
        let access = app.verify(parts)?;
        app.admit(&access, Budget::Calls)?;
        Ok(Authorized)
    }
}

/// A check whose key is live; counted only when the service limits checks
/// (`--limit-checks`).
#[derive(Debug)]
pub struct CheckCaller;

impl FromRequestParts<App> for CheckCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, ApiError> {
        let access = app.verify(parts)?;
        if app.inner.limit_checks {
            app.admit(&access, Budget::Calls)?;
        }
        Ok(CheckCaller)
    }
}

/// A call whose key is live, not yet counted: the handler counts it once
/// it knows which budget it spends (a share or revoke by its items).
#[derive(Debug)]
pub struct Verified(pub String);

impl FromRequestParts<App> for Verified {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, ApiError> {
        app.verify(parts)
            .map(|access| Verified(access.into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_is_used_over_the_parameter() {
        let mut h = HeaderMap::new();
        assert_eq!(
            credentials(&h, Some("accessKey=a&secretKey=s")),
            ("a".into(), "s".into())
        );
        h.insert("X-LSQ-AccessKey", "ha".parse().unwrap());
        assert_eq!(
            credentials(&h, Some("accessKey=a&secretKey=s")),
            ("ha".into(), "s".into())
        );
        h.insert("x-lsq-secretkey", "hs".parse().unwrap());
        assert_eq!(credentials(&h, None), ("ha".into(), "hs".into()));
        assert_eq!(
            credentials(&HeaderMap::new(), None),
            (Cow::Borrowed(""), Cow::Borrowed(""))
        );
    }
}
