//! Who may call which route: bearer tokens, compared in constant time.
//!
//! Each route declares an [`Access`]: public, or the principals whose token it
//! accepts: the operator's admin token, and the service token the voucher
//! service presents to the wallet service (its credit endpoint only).
//!
//! Tokens are kept only as SHA-256 digests, so comparing fixed-size digests with
//! `subtle` leaks neither content nor length, and no token text stays in memory
//! to be logged by accident. With no token configured the policy is open: the app
//! allows that only on a loopback address (see `App::build`).

use super::error::ApiError;
use crate::config::{digest, AcceptedTokens, Token};

/// A kind of caller that holds a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    /// The operator: creates vouchers, reads reports and wallets, moves money.
    Admin,
    /// The voucher service, calling the wallet service's credit endpoint.
    Service,
}

/// What a route requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: redeem, voucher reads, redemption status, health.
    Public,
    /// A token of one of these principals.
    Only(&'static [Principal]),
}

/// Routes only the operator may call.
pub const ADMIN: Access = Access::Only(&[Principal::Admin]);
/// The credit endpoint: only the voucher service (its service token).
pub const SERVICE: Access = Access::Only(&[Principal::Service]);

/// The tokens this instance accepts, by principal.
#[derive(Debug, Clone, Default)]
pub struct AccessPolicy {
    tokens: Vec<(Principal, Token)>,
}

impl AccessPolicy {
    /// No token configured: every route is open (loopback only, see `App::build`).
    pub fn open() -> Self {
        Self::default()
    }

    /// The policy that accepts `tokens`, each for its principal.
    pub fn of(tokens: &AcceptedTokens) -> Self {
        let mut policy = Self::open();
        if let Some(token) = &tokens.admin {
            policy = policy.with_token(Principal::Admin, token.clone());
        }
        if let Some(token) = &tokens.service {
            policy = policy.with_token(Principal::Service, token.clone());
        }
        policy
    }

    pub fn with_token(mut self, principal: Principal, token: Token) -> Self {
        self.tokens.push((principal, token));
        self
    }

    pub fn is_open(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Whether a request with this `Authorization` header may use a route of `access`.
    pub fn check(&self, access: Access, authorization: Option<&str>) -> Result<(), ApiError> {
        let Access::Only(principals) = access else {
            return Ok(());
        };
        if self.is_open() {
            return Ok(());
        }
        let presented = authorization
            .and_then(bearer_token)
            .map(|token| digest(token.as_bytes()))
            .ok_or(ApiError::Unauthorized)?;
        // Compare with every configured token, so timing does not tell which matched.
        let mut granted = false;
        for (principal, token) in &self.tokens {
            granted |= token.matches(&presented) && principals.contains(principal);
        }
        if granted {
            Ok(())
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme is
/// case-insensitive, as RFC 9110 says).
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case("bearer ") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "s3cret-token-0123456789";

    fn admin_only() -> AccessPolicy {
        AccessPolicy::open().with_token(Principal::Admin, Token::new(SECRET).unwrap())
    }

    #[test]
    fn admin_routes_need_the_admin_token() {
        let policy = admin_only();
        assert!(policy
            .check(ADMIN, Some(format!("Bearer {SECRET}").as_str()))
            .is_ok());
        assert!(policy
            .check(ADMIN, Some(format!("bearer {SECRET}").as_str()))
            .is_ok());
        assert!(matches!(
            policy.check(ADMIN, None),
            Err(ApiError::Unauthorized)
        ));
        assert!(matches!(
            policy.check(ADMIN, Some("Bearer wrong-token-0123456789")),
            Err(ApiError::Unauthorized)
        ));
        assert!(matches!(
            policy.check(ADMIN, Some(format!("Basic {SECRET}").as_str())),
            Err(ApiError::Unauthorized)
        ));
        assert!(matches!(
            policy.check(ADMIN, Some("Bearer ")),
            Err(ApiError::Unauthorized)
        ));
    }

    #[test]
    fn public_routes_and_an_open_policy_need_nothing() {
        assert!(admin_only().check(Access::Public, None).is_ok());
        assert!(AccessPolicy::open().check(ADMIN, None).is_ok());
    }

    #[test]
    fn weak_tokens_are_refused_and_tokens_never_print() {
        assert!(Token::new("short").is_err());
        assert!(Token::new("has a space in it, long enough").is_err());
        let token = Token::new(&format!("{SECRET}\n")).unwrap();
        assert_eq!(format!("{token:?}"), "Token(***)");
        assert!(!format!("{:?}", admin_only()).contains(SECRET));
    }
}
