//! The rules of values that serde cannot see, as JSON Schema: the DTOs use them
//! through `#[schema(schema_with = ...)]`, the operations for their parameters.
//! Each mirrors a validator in [`voucherd_core::domain`] or [`crate::http::dto`]; the tests
//! check the two agree.

use utoipa::openapi::schema::{
    KnownFormat, ObjectBuilder, OneOfBuilder, Schema, SchemaFormat, SchemaType, Type,
};
use utoipa::Number;

use voucherd_core::limits::{MAX_PAGE_LIMIT, MAX_PAGE_OFFSET, MAX_VOUCHER_LIMIT};

/// `VoucherCode::parse`.
pub const CODE_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";
/// `PhoneNumber::parse`.
pub const PHONE_PATTERN: &str = "^\\+[1-9][0-9]{7,14}$";
/// The Idempotency-Key check in `endpoints::transaction::handle`.
pub const IDEMPOTENCY_KEY_PATTERN: &str = "^[!-~]{1,255}$";
/// `parse_reference`: at most 128 characters, none a control character, and
/// not one the service reserves (`voucher:…`, `opening_balance`, any case,
/// surrounding whitespace ignored).
pub const CLIENT_REFERENCE_PATTERN: &str = "^(?!\\s*[Vv][Oo][Uu][Cc][Hh][Ee][Rr]:)(?!\\s*[Oo][Pp][Ee][Nn][Ii][Nn][Gg]_[Bb][Aa][Ll][Aa][Nn][Cc][Ee]\\s*$)[^\\u0000-\\u001F\\u007F-\\u009F]{0,128}$";
/// A credit's reference, `voucher:<code>`.
pub const VOUCHER_REFERENCE_PATTERN: &str = "^voucher:[A-Za-z0-9_-]{1,64}$";
/// A page cursor as `page_request` reads it (empty: none).
pub const CURSOR_PATTERN: &str = "^[0-9]{0,19}$";

fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

fn nullable(kind: Type) -> SchemaType {
    SchemaType::from_iter([kind, Type::Null])
}

fn int64() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
}

pub fn code() -> Schema {
    string()
        .pattern(Some(CODE_PATTERN))
        .max_length(Some(64))
        .min_length(Some(1))
        .examples(["GOAL2026"])
        .into()
}

pub fn phone() -> Schema {
    string()
        .pattern(Some(PHONE_PATTERN))
        .examples(["+989371209055"])
        .into()
}

pub fn uuid() -> Schema {
    string()
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
        .into()
}

pub fn timestamp() -> Schema {
    string()
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
        .into()
}

pub fn optional_timestamp() -> Schema {
    ObjectBuilder::new()
        .schema_type(nullable(Type::String))
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
        .into()
}

/// A credit: 1..=i64::MAX minor units.
pub fn positive_amount() -> Schema {
    int64()
        .minimum(Some(Number::Int(1)))
        .maximum(Some(Number::Int(isize::MAX)))
        .into()
}

/// A transaction: a credit (> 0) or a debit (< 0), never 0.
pub fn non_zero_amount() -> Schema {
    OneOfBuilder::new()
        .item(
            int64()
                .minimum(Some(Number::Int(isize::MIN)))
                .maximum(Some(Number::Int(-1))),
        )
        .item(positive_amount())
        .into()
}

/// A balance: never below zero (I5).
pub fn balance() -> Schema {
    int64()
        .minimum(Some(Number::Int(0)))
        .maximum(Some(Number::Int(isize::MAX)))
        .into()
}

pub fn optional_opening_balance() -> Schema {
    ObjectBuilder::new()
        .schema_type(nullable(Type::Integer))
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(Number::Int(0)))
        .maximum(Some(Number::Int(isize::MAX)))
        .into()
}

pub fn voucher_limit() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(Number::Int(1)))
        .maximum(Some(Number::UInt(MAX_VOUCHER_LIMIT as usize)))
        .into()
}

pub fn page_limit() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(Number::Int(1)))
        .maximum(Some(Number::UInt(MAX_PAGE_LIMIT as usize)))
        .into()
}

pub fn page_offset() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(Number::Int(0)))
        .maximum(Some(Number::UInt(MAX_PAGE_OFFSET as usize)))
        .into()
}

pub fn cursor() -> Schema {
    string().pattern(Some(CURSOR_PATTERN)).into()
}

pub fn next_cursor() -> Schema {
    ObjectBuilder::new()
        .schema_type(nullable(Type::String))
        .pattern(Some("^[0-9]+$"))
        .into()
}

pub fn idempotency_key() -> Schema {
    string()
        .pattern(Some(IDEMPOTENCY_KEY_PATTERN))
        .min_length(Some(1))
        .max_length(Some(255))
        .into()
}

pub fn optional_client_reference() -> Schema {
    ObjectBuilder::new()
        .schema_type(nullable(Type::String))
        .pattern(Some(CLIENT_REFERENCE_PATTERN))
        .max_length(Some(128))
        .into()
}

pub fn voucher_reference() -> Schema {
    string().pattern(Some(VOUCHER_REFERENCE_PATTERN)).into()
}

pub fn redemption_status() -> Schema {
    string()
        .enum_values(Some(["pending", "credited", "void"]))
        .into()
}

pub fn reported_status() -> Schema {
    string().enum_values(Some(["pending", "credited"])).into()
}

pub fn not_ready() -> Schema {
    string().enum_values(Some(["not_ready"])).into()
}
