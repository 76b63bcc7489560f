//! Validated domain values: voucher codes, phone numbers, amounts, timestamps,
//! and the records the ledger stores.
//!
//! Every value here is checked once, at the edge, by its constructor; code past
//! the HTTP layer never re-validates. [`wallet`] holds the wallet rules every
//! ledger backend applies.

pub mod wallet;

use std::fmt;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{Error, ErrorCode, Result};
use crate::limits::{
    MAX_CODE_CHARS, MAX_PHONE_DIGITS, MAX_REFERENCE_CHARS, MAX_VOUCHER_LIMIT, MIN_PHONE_DIGITS,
};

/// Namespace of redemption ids: UUIDv5(namespace, "code\nphone").
const REDEMPTION_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2a4e_9b1d_4c55_8e0a_51d3_7a2b_c0de);
/// Namespace of ids of transactions sent with an Idempotency-Key: UUIDv5(namespace,
/// key). Keys used to be scoped per phone (UUIDv5 of "phone\nkey" in
/// 0x0b7e5d19-3c2a-4f88-9d61-27abe4f01357); a new namespace keeps the two kinds
/// of id apart.
const TRANSACTION_NAMESPACE: Uuid = Uuid::from_u128(0x5a2e_91c7_0d4b_4e6a_b3f8_6c1d_92e0_7a44);

/// A voucher code: `[A-Za-z0-9_-]{1,64}`, case-sensitive.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VoucherCode(String);

impl VoucherCode {
    pub fn parse(raw: &str) -> Result<Self> {
        let valid_chars = raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if raw.is_empty() || raw.len() > MAX_CODE_CHARS || !valid_chars {
            return Err(Error::invalid(
                ErrorCode::InvalidCode,
                format!("code must match [A-Za-z0-9_-]{{1,{MAX_CODE_CHARS}}}"),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VoucherCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An E.164 phone number, kept as the integer of its digits. The first digit is
/// never zero, so the integer round-trips to the same text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PhoneNumber(u64);

impl PhoneNumber {
    pub fn parse(raw: &str) -> Result<Self> {
        let invalid = || {
            Error::invalid(
                ErrorCode::InvalidPhoneNumber,
                format!(
                    "phone_number must be E.164: '+' then {MIN_PHONE_DIGITS} to {MAX_PHONE_DIGITS} digits, the first not 0"
                ),
            )
        };
        let digits = raw.strip_prefix('+').ok_or_else(invalid)?;
        let length_ok = (MIN_PHONE_DIGITS..=MAX_PHONE_DIGITS).contains(&digits.len());
        if !length_ok || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.starts_with('0') {
            return Err(invalid());
        }
        digits.parse::<u64>().map(Self).map_err(|_| invalid())
    }

    /// The number as stored by the ledger. Only values made by [`PhoneNumber::parse`]
    /// are ever stored, so [`PhoneNumber::from_stored`] needs no validation.
    pub fn stored(self) -> u64 {
        self.0
    }

    pub fn from_stored(value: u64) -> Self {
        Self(value)
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "+{}", self.0)
    }
}

/// Microseconds since the Unix epoch, UTC. The ledger stores time as this integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Self {
        let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
        Self((nanos / 1_000) as i64)
    }

    /// Parses an RFC 3339 timestamp whose instant, in UTC, falls in the years
    /// 0000 to 9999: only such an instant can be written back in RFC 3339
    /// (`9999-12-31T23:30:00-01:00` is in the year 10000 in UTC).
    pub fn parse_rfc3339(raw: &str, code: ErrorCode) -> Result<Self> {
        let invalid = || {
            Error::invalid(
                code,
                "timestamps must be RFC 3339 within the years 0000 to 9999 in UTC, e.g. 2026-11-25T12:00:00Z",
            )
        };
        let parsed = OffsetDateTime::parse(raw, &Rfc3339).map_err(|_| invalid())?;
        let nanos = parsed.unix_timestamp_nanos();
        // In UTC (the conversion fails, never panics, past the years ±9999).
        let utc_year = OffsetDateTime::from_unix_timestamp_nanos(nanos).map(|utc| utc.year());
        if !utc_year.is_ok_and(|year| (0..=9999).contains(&year)) {
            return Err(invalid());
        }
        Ok(Self((nanos / 1_000) as i64))
    }

    pub fn to_rfc3339(self) -> String {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_default()
    }
}

/// A voucher as created: what it credits, to how many users, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voucher {
    pub code: VoucherCode,
    /// Credit per redemption, in minor units; always > 0.
    pub amount: i64,
    /// Number of slots; always in 1..=MAX_VOUCHER_LIMIT.
    pub limit: u32,
    pub starts_at: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
    pub created_at: Timestamp,
}

impl Voucher {
    /// Checks amount, limit and window; the code is already valid by type.
    pub fn new(
        code: VoucherCode,
        amount: i64,
        limit: u32,
        starts_at: Option<Timestamp>,
        expires_at: Option<Timestamp>,
        created_at: Timestamp,
    ) -> Result<Self> {
        if amount <= 0 {
            return Err(Error::invalid(
                ErrorCode::InvalidAmount,
                "amount must be a positive integer of minor units",
            ));
        }
        if !(1..=MAX_VOUCHER_LIMIT).contains(&limit) {
            return Err(Error::invalid(
                ErrorCode::InvalidLimit,
                format!("limit must be between 1 and {MAX_VOUCHER_LIMIT}"),
            ));
        }
        if let (Some(start), Some(end)) = (starts_at, expires_at) {
            if start >= end {
                return Err(Error::invalid(
                    ErrorCode::InvalidWindow,
                    "starts_at must be before expires_at",
                ));
            }
        }
        Ok(Self {
            code,
            amount,
            limit,
            starts_at,
            expires_at,
            created_at,
        })
    }

    /// True when the voucher has a start or an end (only then does
    /// [`Voucher::is_active_at`] need the time).
    pub fn has_window(&self) -> bool {
        self.starts_at.is_some() || self.expires_at.is_some()
    }

    pub fn is_active_at(&self, now: Timestamp) -> bool {
        self.starts_at.is_none_or(|start| now >= start)
            && self.expires_at.is_none_or(|end| now < end)
    }
}

/// A voucher with its live counts, as the ledger reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoucherStatus {
    pub voucher: Voucher,
    pub redeemed: u32,
}

/// The stable id of (voucher, user): the same on every retry, and the id of the
/// wallet credit the redemption makes, so a retried credit is a no-op.
pub fn redemption_id(code: &VoucherCode, phone: PhoneNumber) -> Uuid {
    let name = format!("{}\n{}", code.as_str(), phone);
    Uuid::new_v5(&REDEMPTION_NAMESPACE, name.as_bytes())
}

/// The id of a wallet transaction: derived from the Idempotency-Key alone when
/// there is one, random otherwise. A key names one request, whoever it is for:
/// the same key always maps to the same id, so the ledger answers a retry with
/// the first transaction and a different request under that key (another phone,
/// amount or reference) with `IdempotencyKeyReused`.
pub fn transaction_id(idempotency_key: Option<&str>) -> Uuid {
    match idempotency_key {
        Some(key) => Uuid::new_v5(&TRANSACTION_NAMESPACE, key.as_bytes()),
        None => Uuid::new_v4(),
    }
}

/// What every voucher credit's reference starts with.
pub const VOUCHER_REFERENCE_PREFIX: &str = "voucher:";

/// The reference a voucher credit carries in the wallet.
pub fn voucher_reference(code: &VoucherCode) -> String {
    format!("{VOUCHER_REFERENCE_PREFIX}{code}")
}

/// Reference of the transaction that records a profile's opening balance.
pub const OPENING_BALANCE_REFERENCE: &str = "opening_balance";

/// True for a reference only the service writes: a voucher credit's
/// (`voucher:<code>`) or an opening balance's. A client's transaction with one
/// would pass for a credit no redemption backs, so look-alikes (other letter
/// case, surrounding spaces) are reserved too.
pub fn is_reserved_reference(reference: &str) -> bool {
    let reference = reference.trim();
    let voucher_like = reference
        .get(..VOUCHER_REFERENCE_PREFIX.len())
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case(VOUCHER_REFERENCE_PREFIX));
    voucher_like || reference.eq_ignore_ascii_case(OPENING_BALANCE_REFERENCE)
}

/// Validates a client-supplied transaction reference: bounded, printable, and
/// not one the service reserves for itself.
pub fn parse_reference(raw: &str) -> Result<String> {
    if raw.chars().count() > MAX_REFERENCE_CHARS || raw.chars().any(char::is_control) {
        return Err(Error::invalid(
            ErrorCode::InvalidBody,
            format!("reference must be at most {MAX_REFERENCE_CHARS} printable characters"),
        ));
    }
    if is_reserved_reference(raw) {
        return Err(Error::invalid(
            ErrorCode::ReservedReference,
            format!(
                "references starting with '{VOUCHER_REFERENCE_PREFIX}' and \
                 '{OPENING_BALANCE_REFERENCE}' are written by the service only"
            ),
        ));
    }
    Ok(raw.to_owned())
}

/// Where a redemption stands. In one process (role `all`) a redemption is born
/// `Credited`: its claim and its credit are one write. Across two services it is
/// born `Pending` and the protocol in [`crate::redemption`] moves it on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RedemptionStatus {
    /// Slot and user key are held; the wallet credit has not been confirmed.
    Pending,
    /// The wallet holds the credit whose id is the redemption id.
    Credited,
    /// The wallet refused the credit for good; slot and user key were released.
    Void,
}

impl RedemptionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RedemptionStatus::Pending => "pending",
            RedemptionStatus::Credited => "credited",
            RedemptionStatus::Void => "void",
        }
    }

    /// The number a ledger stores for this status.
    pub fn stored(self) -> u8 {
        match self {
            RedemptionStatus::Pending => 0,
            RedemptionStatus::Credited => 1,
            RedemptionStatus::Void => 2,
        }
    }

    pub fn from_stored(stored: u8) -> Result<Self> {
        match stored {
            0 => Ok(RedemptionStatus::Pending),
            1 => Ok(RedemptionStatus::Credited),
            2 => Ok(RedemptionStatus::Void),
            other => Err(Error::storage(format!("unknown redemption status {other}"))),
        }
    }
}

/// A redemption: the claim of one slot by one user, and where its credit stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redemption {
    pub id: Uuid,
    pub code: VoucherCode,
    pub phone: PhoneNumber,
    pub amount: i64,
    pub slot: u32,
    pub redeemed_at: Timestamp,
    pub status: RedemptionStatus,
    /// Wallet balance right after the credit, once the redemption is credited
    /// and the ledger knows it (a credited redemption settled by recovery on
    /// another instance may not).
    pub balance: Option<i64>,
}

/// One line of a voucher's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportEntry {
    pub slot: u32,
    pub phone: PhoneNumber,
    pub redeemed_at: Timestamp,
    pub status: RedemptionStatus,
}

/// A wallet transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletTransaction {
    pub id: Uuid,
    pub phone: PhoneNumber,
    /// Orders a wallet's transactions: a later one has a larger sequence. The
    /// embedded ledger numbers all transactions globally, the SQL one per wallet;
    /// either way it is the wallet listing's cursor.
    pub sequence: u64,
    pub amount: i64,
    pub reference: String,
    pub created_at: Timestamp,
    /// Balance right after this transaction.
    pub balance_after: i64,
}

/// A wallet's head: its balance and when it was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wallet {
    pub phone: PhoneNumber,
    pub balance: i64,
    pub created_at: Timestamp,
}

/// Which part of a listing to read. `cursor` is the position after which to
/// start (a slot number for reports, a sequence for wallets); `offset` then skips.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: u32,
    pub offset: u32,
    pub cursor: Option<u64>,
}

/// A page of a listing, with the cursor of the next page if there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_numbers_must_be_e164() {
        assert_eq!(
            PhoneNumber::parse("+989371209055").unwrap().to_string(),
            "+989371209055"
        );
        for bad in [
            "989371209055",
            "+1234567",
            "+1234567890123456",
            "+0123456789",
            "+12345abc9",
            "+",
            "",
        ] {
            assert!(PhoneNumber::parse(bad).is_err(), "{bad} must be rejected");
        }
    }

    #[test]
    fn codes_are_restricted() {
        assert!(VoucherCode::parse("GOAL_2026-x").is_ok());
        assert!(VoucherCode::parse(&"a".repeat(64)).is_ok());
        for bad in ["", "a b", "ä", &"a".repeat(65), "a/b"] {
            assert!(VoucherCode::parse(bad).is_err(), "{bad} must be rejected");
        }
    }

    #[test]
    fn redemption_id_is_stable_and_distinct() {
        let code = VoucherCode::parse("GOAL").unwrap();
        let a = PhoneNumber::parse("+989371209055").unwrap();
        let b = PhoneNumber::parse("+989371209056").unwrap();
        assert_eq!(redemption_id(&code, a), redemption_id(&code, a));
        assert_ne!(redemption_id(&code, a), redemption_id(&code, b));
    }

    #[test]
    fn references_the_service_writes_are_reserved() {
        let code = VoucherCode::parse("GOAL").unwrap();
        for reserved in [
            voucher_reference(&code).as_str(),
            "voucher:",
            "VOUCHER:GOAL",
            " voucher:GOAL",
            OPENING_BALANCE_REFERENCE,
            "Opening_Balance ",
        ] {
            match parse_reference(reserved) {
                Err(Error::Invalid { code, .. }) => {
                    assert_eq!(code, ErrorCode::ReservedReference, "{reserved:?}")
                }
                other => panic!("{reserved:?} must be reserved, got {other:?}"),
            }
        }
        for free in [
            "",
            "order-1",
            "my voucher: refund",
            "opening_balance_fix",
            "vöucher:x",
        ] {
            assert_eq!(parse_reference(free), Ok(free.to_owned()));
        }
    }

    #[test]
    fn a_transaction_id_depends_on_the_key_only() {
        assert_eq!(transaction_id(Some("k1")), transaction_id(Some("k1")));
        assert_ne!(transaction_id(Some("k1")), transaction_id(Some("k2")));
        assert_ne!(transaction_id(None), transaction_id(None));
    }

    #[test]
    fn timestamps_round_trip() {
        let t = Timestamp::parse_rfc3339("2026-11-25T12:00:00Z", ErrorCode::InvalidWindow).unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-25T12:00:00Z");
    }

    #[test]
    fn timestamps_outside_what_rfc3339_can_write_in_utc_are_refused() {
        for outside in ["9999-12-31T23:59:59-01:00", "0000-01-01T00:00:00+01:00"] {
            match Timestamp::parse_rfc3339(outside, ErrorCode::InvalidWindow) {
                Err(Error::Invalid { code, .. }) => assert_eq!(code, ErrorCode::InvalidWindow),
                other => panic!("{outside} must be refused, got {other:?}"),
            }
        }
        for inside in [
            "9999-12-31T23:59:59Z",
            "0000-01-01T00:00:00Z",
            "0001-01-01T00:00:00+01:00",
        ] {
            let t = Timestamp::parse_rfc3339(inside, ErrorCode::InvalidWindow).unwrap();
            assert!(!t.to_rfc3339().is_empty(), "{inside} must be written back");
        }
    }
}
