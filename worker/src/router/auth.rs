//! Caller tokens and their limits.
//!
//! A token is `ec_<id>_<secret>`. The id (not secret) finds the token's row; the stored value is the
//! SHA-256 of the secret, compared in constant time. The secret never leaves the request.

use std::collections::VecDeque;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::api::ApiError;

/// The parts of a bearer token.
#[derive(Debug, PartialEq, Eq)]
pub struct BearerToken<'a> {
    pub id: &'a str,
    pub secret: &'a str,
}

/// Reads `Authorization: Bearer ec_<id>_<secret>`.
pub fn parse_authorization(header: Option<&str>) -> Result<BearerToken<'_>, ApiError> {
    let header = header
        .ok_or_else(|| ApiError::unauthorized("missing `Authorization: Bearer <token>` header"))?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .ok_or_else(|| ApiError::unauthorized("the Authorization header must be `Bearer <token>`"))?
        .trim();
    let malformed = || ApiError::unauthorized("invalid token");
    let rest = token.strip_prefix("ec_").ok_or_else(malformed)?;
    let (id, secret) = rest.split_once('_').ok_or_else(malformed)?;
    let valid_part =
        |s: &str| (1..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric());
    if !valid_part(id) || !valid_part(secret) {
        return Err(malformed());
    }
    Ok(BearerToken { id, secret })
}

/// Hex SHA-256 of a token secret: what the tokens table stores.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Whether `secret` hashes to `stored_hex`, in time independent of where they differ.
pub fn verify_secret(secret: &str, stored_hex: &str) -> bool {
    let Ok(stored) = hex::decode(stored_hex) else {
        return false;
    };
    let digest = Sha256::digest(secret.as_bytes());
    stored.len() == digest.len() && bool::from(digest.as_slice().ct_eq(&stored))
}

/// Sliding one-minute request window for one token.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct RateWindow {
    hits_ms: VecDeque<u64>,
}

pub const WINDOW_MS: u64 = 60_000;

impl RateWindow {
    /// Counts a request at `now_ms` if fewer than `limit` were made in the last minute; otherwise
    /// returns the seconds until one slot frees up.
    pub fn take(&mut self, now_ms: u64, limit: u32) -> Result<(), u64> {
        self.take_up_to(now_ms, limit, 1).map(drop)
    }

    /// Counts up to `n` requests at `now_ms`, as many as the last minute's `limit` leaves room
    /// for, and says how many; with no room, the seconds until one slot frees up.
    pub fn take_up_to(&mut self, now_ms: u64, limit: u32, n: u32) -> Result<u32, u64> {
        while self
            .hits_ms
            .front()
            .is_some_and(|&t| t + WINDOW_MS <= now_ms)
        {
            self.hits_ms.pop_front();
        }
        let room = (limit as usize).saturating_sub(self.hits_ms.len());
        if room == 0 {
            let oldest = self.hits_ms.front().copied().unwrap_or(now_ms);
            return Err((oldest + WINDOW_MS - now_ms).div_ceil(1000).max(1));
        }
        let taken = room.min(n.max(1) as usize);
        self.hits_ms.extend(std::iter::repeat_n(now_ms, taken));
        Ok(taken as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tokens_and_rejects_malformed_ones() {
        assert_eq!(
            parse_authorization(Some("Bearer ec_abc123_s3cret")).unwrap(),
            BearerToken {
                id: "abc123",
                secret: "s3cret"
            }
        );
        for bad in [
            None,
            Some("Basic x"),
            Some("Bearer "),
            Some("Bearer sk-123"),
            Some("Bearer ec_x"),
            Some("Bearer ec__y"),
            Some("Bearer ec_a_b-c"),
        ] {
            let e = parse_authorization(bad).unwrap_err();
            assert_eq!(e.status, 401, "{bad:?}");
            assert!(!e.message.contains("s3cret"));
        }
    }

    #[test]
    fn verifies_the_hash_of_the_secret() {
        let stored = hash_secret("s3cret");
        assert_eq!(stored.len(), 64);
        assert!(verify_secret("s3cret", &stored));
        assert!(!verify_secret("s3creT", &stored));
        assert!(!verify_secret("s3cret", "zz"));
        assert!(!verify_secret("s3cret", &stored[..62]));
    }

    #[test]
    fn several_requests_are_taken_as_far_as_the_window_has_room() {
        let mut w = RateWindow::default();
        assert_eq!(w.take_up_to(0, 5, 3), Ok(3));
        assert_eq!(w.take_up_to(10, 5, 3), Ok(2));
        assert_eq!(w.take_up_to(20, 5, 3), Err(60));
        assert_eq!(
            w.take_up_to(WINDOW_MS, 5, 4),
            Ok(3),
            "the first three expired"
        );
        assert_eq!(w.take_up_to(WINDOW_MS, 5, 1), Err(1), "full again");
        assert_eq!(
            RateWindow::default().take_up_to(0, 5, 0),
            Ok(1),
            "at least one"
        );
    }

    #[test]
    fn the_window_limits_requests_per_minute() {
        let mut w = RateWindow::default();
        assert!(w.take(0, 2).is_ok());
        assert!(w.take(10_000, 2).is_ok());
        assert_eq!(w.take(20_000, 2), Err(40));
        assert!(w.take(60_000, 2).is_ok(), "the first hit left the window");
        assert_eq!(w.take(60_001, 2), Err(10));
    }
}
