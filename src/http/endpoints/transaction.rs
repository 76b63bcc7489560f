//! `POST /api/transactions`: the operator credits or debits a wallet, made safe
//! to retry by an optional Idempotency-Key.

use serde::{Deserialize, Serialize};
use serde_json::Number;
use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
use utoipa::openapi::Required;
use utoipa::ToSchema;
use warp::http::{Method, StatusCode};
use warp::reply::Response;

use super::{respond, Endpoint, Inputs, Outcome};
use crate::http::auth::ADMIN;
use crate::http::dto::{integer_of, parse_json};
use crate::http::openapi::{json_response, phone_link, schemas, Components, Described};
use crate::http::routes::RouteSpec;
use crate::http::routes::Segment::Literal as L;
use voucherd_core::domain::{parse_reference, PhoneNumber, WalletTransaction};
use voucherd_core::error::{Error, ErrorCode};
use voucherd_core::limits::MAX_IDEMPOTENCY_KEY_BYTES;
use voucherd_metrics::Route;
use voucherd_service::role::Serves;
use voucherd_service::service::{Service, TransactionRequest};

/// Its row of the route table.
pub static ROUTE: RouteSpec = RouteSpec {
    endpoint: Endpoint::Transaction,
    label: Route::transaction,
    method: Method::POST,
    path: &[L("api"), L("transactions")],
    access: ADMIN,
    reads_body: true,
    serves: Serves::Wallets,
};

/// A credit (`amount` > 0, opening the wallet if missing) or a debit
/// (`amount` < 0) of a wallet, in minor units, with the client's own optional
/// `reference` (empty when absent; `voucher:…` and `opening_balance`, in any
/// letter case, are the service's own).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransactionBody {
    #[schema(schema_with = schemas::phone)]
    pub phone_number: String,
    /// Minor units: > 0 credits (opening the wallet if missing), < 0 debits.
    #[schema(schema_with = schemas::non_zero_amount)]
    pub amount: Number,
    /// The client's own reference (empty when absent). `voucher:…` and
    /// `opening_balance`, in any letter case, are the service's own (400
    /// `reserved_reference`).
    #[schema(schema_with = schemas::optional_client_reference)]
    pub reference: Option<String>,
}

/// A transaction as applied (or, for a repeated Idempotency-Key, as first applied).
#[derive(Debug, Serialize, PartialEq, Eq, ToSchema)]
pub struct TransactionResponse {
    /// Derived from the Idempotency-Key when one was sent, random otherwise.
    #[schema(schema_with = schemas::uuid)]
    pub id: String,
    #[schema(schema_with = schemas::phone)]
    pub phone_number: String,
    #[schema(schema_with = schemas::non_zero_amount)]
    pub amount: i64,
    /// The wallet's balance right after this transaction.
    #[schema(schema_with = schemas::balance)]
    pub balance: i64,
    pub reference: String,
    #[schema(schema_with = schemas::timestamp)]
    pub created_at: String,
}

impl From<WalletTransaction> for TransactionResponse {
    fn from(t: WalletTransaction) -> Self {
        Self {
            id: t.id.to_string(),
            phone_number: t.phone.to_string(),
            amount: t.amount,
            balance: t.balance_after,
            reference: t.reference,
            created_at: t.created_at.to_rfc3339(),
        }
    }
}

/// Answers a request of this route.
pub(super) async fn serve(service: &Service, inputs: Inputs) -> Response {
    let Inputs {
        idempotency_key,
        body,
        ..
    } = inputs;
    respond(
        StatusCode::OK,
        async { handle(service, idempotency_key, &body?).await }.await,
    )
}

/// Checks the Idempotency-Key, parses the body and applies the transaction.
pub async fn handle(
    service: &Service,
    idempotency_key: Option<String>,
    body: &[u8],
) -> Outcome<TransactionResponse> {
    if let Some(key) = &idempotency_key {
        let printable = key.bytes().all(|b| b.is_ascii_graphic());
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_BYTES || !printable {
            return Err(Error::invalid(
                ErrorCode::InvalidIdempotencyKey,
                format!(
                    "Idempotency-Key must be 1..={MAX_IDEMPOTENCY_KEY_BYTES} printable ASCII bytes"
                ),
            )
            .into());
        }
    }
    let body: TransactionBody = parse_json(body)?;
    let phone = PhoneNumber::parse(&body.phone_number)?;
    let amount = integer_of(&body.amount)
        .filter(|a| *a != 0)
        .ok_or_else(|| {
            Error::invalid(
                ErrorCode::InvalidAmount,
                "amount must be a non-zero integer of minor units",
            )
        })?;
    let reference = parse_reference(body.reference.as_deref().unwrap_or(""))?;
    let request = TransactionRequest {
        phone,
        amount,
        reference,
        idempotency_key,
    };
    Ok(service.transact(request).await?.into())
}

/// Its operation in the contract, beyond what its route row says.
pub(crate) fn describe(components: &mut Components) -> Described {
    Described {
        operation_id: "createTransaction",
        summary: "Credit or debit a wallet",
        description: "A positive amount credits (opening the wallet if missing), a negative one debits; \
            a debit below zero is 409 `insufficient_funds` and changes nothing. An Idempotency-Key binds \
            the whole request, whatever the phone: the same key with the same phone, amount and \
            reference answers the first transaction again (same `id`) and changes nothing; with another \
            phone, amount or reference it is 409 `idempotency_key_reused`.",
        parameters: vec![ParameterBuilder::new()
            .name("Idempotency-Key")
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some(
                "Makes a retry safe: one key names one request, for the whole service.",
            ))
            .schema(Some(schemas::idempotency_key()))
            .build()],
        request_body: Some(components.schema::<TransactionBody>()),
        responses: vec![(
            200,
            json_response(
                "Applied (or, for a repeated Idempotency-Key, applied before).",
                components.schema::<TransactionResponse>(),
            )
            .link("getProfile", phone_link())
            .build(),
        )],
        errors: &[
            ErrorCode::InvalidPhoneNumber,
            ErrorCode::InvalidAmount,
            ErrorCode::InvalidIdempotencyKey,
            ErrorCode::ReservedReference,
            ErrorCode::InsufficientFunds,
            ErrorCode::IdempotencyKeyReused,
            ErrorCode::Overloaded,
        ],
        reaches_ledger: true,
    }
}
