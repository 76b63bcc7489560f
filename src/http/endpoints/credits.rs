//! `POST /internal/credits`: the wallet service's credit endpoint, called in a
//! split deployment by the voucher service with its service token. Its wire
//! types are the voucher service's too: its client (`wallet_client`) sends a
//! [`CreditBatch`] and reads the [`CreditResults`].

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use warp::http::{Method, StatusCode};
use warp::reply::Response;

use super::{respond, Endpoint, Inputs, Outcome};
use crate::http::auth::SERVICE;
use crate::http::dto::{deserialize_integer, parse_json};
use crate::http::openapi::{json_response, schemas, Components, Described};
use crate::http::routes::RouteSpec;
use crate::http::routes::Segment::Literal as L;
use voucherd_core::domain::{PhoneNumber, VoucherCode, VOUCHER_REFERENCE_PREFIX};
use voucherd_core::error::{Error, ErrorCode};
use voucherd_core::limits::MAX_CREDITS_PER_CALL;
use voucherd_core::redemption::{Credit, CreditAnswer};
use voucherd_metrics::Route;
use voucherd_service::role::Serves;
use voucherd_service::service::Service;

/// Its row of the route table.
pub static ROUTE: RouteSpec = RouteSpec {
    endpoint: Endpoint::Credits,
    label: Route::credits,
    method: Method::POST,
    path: &[L("internal"), L("credits")],
    access: SERVICE,
    reads_body: true,
    serves: Serves::Wallets,
};

/// One credit on the wire.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreditItem {
    /// The redemption id: a credit is applied at most once by its id.
    pub id: uuid::Uuid,
    #[schema(schema_with = schemas::phone)]
    pub phone_number: String,
    #[schema(schema_with = schemas::positive_amount)]
    #[serde(deserialize_with = "deserialize_integer")]
    pub amount: i64,
    /// `voucher:<code>`.
    #[schema(schema_with = schemas::voucher_reference)]
    pub reference: String,
}

/// The body of `POST /internal/credits`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreditBatch {
    #[schema(min_items = 1, max_items = 64)]
    pub credits: Vec<CreditItem>,
}

/// The wallet's answer to one credit, in the order of the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum CreditResultItem {
    /// Applied now or before; the wallet's balance right after it.
    Applied {
        id: uuid::Uuid,
        #[schema(schema_with = schemas::balance)]
        balance: i64,
    },
    /// Refused for good: the same id is refused again.
    Refused { id: uuid::Uuid, reason: String },
    /// Not decided now (overload, the store unavailable): ask again.
    Unknown { id: uuid::Uuid },
}

impl CreditResultItem {
    /// The wallet's answer to credit `id`, on the wire.
    pub fn of(id: uuid::Uuid, answer: CreditAnswer) -> Self {
        match answer {
            CreditAnswer::Applied { balance } => CreditResultItem::Applied { id, balance },
            CreditAnswer::Refused { reason } => CreditResultItem::Refused { id, reason },
            CreditAnswer::Unknown => CreditResultItem::Unknown { id },
        }
    }

    pub fn id(&self) -> uuid::Uuid {
        match self {
            CreditResultItem::Applied { id, .. }
            | CreditResultItem::Refused { id, .. }
            | CreditResultItem::Unknown { id } => *id,
        }
    }

    pub fn into_answer(self) -> CreditAnswer {
        match self {
            CreditResultItem::Applied { balance, .. } => CreditAnswer::Applied { balance },
            CreditResultItem::Refused { reason, .. } => CreditAnswer::Refused { reason },
            CreditResultItem::Unknown { .. } => CreditAnswer::Unknown,
        }
    }
}

/// The response body of `POST /internal/credits`: one result per credit, in
/// request order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreditResults {
    pub results: Vec<CreditResultItem>,
}

/// Answers a request of this route.
pub(super) async fn serve(service: &Service, inputs: Inputs) -> Response {
    respond(
        StatusCode::OK,
        async { handle(service, &inputs.body?).await }.await,
    )
}

/// The wallet service's credit endpoint, called by the voucher service with
/// its service token: 1 to [`MAX_CREDITS_PER_CALL`] credits, each answered
/// `applied`, `refused` (for good) or `unknown` (ask again).
pub async fn handle(service: &Service, body: &[u8]) -> Outcome<CreditResults> {
    let batch: CreditBatch = parse_json(body)?;
    if batch.credits.is_empty() || batch.credits.len() > MAX_CREDITS_PER_CALL {
        return Err(Error::invalid(
            ErrorCode::InvalidBody,
            format!("credits must hold 1 to {MAX_CREDITS_PER_CALL} credits"),
        )
        .into());
    }
    let now = service.now();
    let credits = batch
        .credits
        .into_iter()
        .map(|item| credit_of(item, now))
        .collect::<Result<Vec<_>, Error>>()?;
    let ids: Vec<_> = credits.iter().map(|credit| credit.id).collect();
    let answers = service.apply_credits(credits).await;
    let results = ids.into_iter().zip(answers);
    let results = results.map(|(id, answer)| CreditResultItem::of(id, answer));
    Ok(CreditResults {
        results: results.collect(),
    })
}

/// A credit as the voucher service sent it: a positive amount under the
/// reserved reference `voucher:<code>`, which only this endpoint accepts.
fn credit_of(item: CreditItem, now: voucherd_core::domain::Timestamp) -> Result<Credit, Error> {
    let phone = PhoneNumber::parse(&item.phone_number)?;
    if item.amount <= 0 {
        return Err(Error::invalid(
            ErrorCode::InvalidAmount,
            "a credit's amount must be positive",
        ));
    }
    let code = item
        .reference
        .strip_prefix(VOUCHER_REFERENCE_PREFIX)
        .ok_or_else(|| {
            Error::invalid(
                ErrorCode::InvalidReference,
                format!("a credit's reference is {VOUCHER_REFERENCE_PREFIX}<code>"),
            )
        })?;
    VoucherCode::parse(code)?;
    Ok(Credit {
        id: item.id,
        phone,
        amount: item.amount,
        reference: item.reference,
        at: now,
    })
}

/// Its operation in the contract, beyond what its route row says.
pub(crate) fn describe(components: &mut Components) -> Described {
    Described {
        operation_id: "applyCredits",
        summary: "Split mode: the voucher service's credits (service token only)",
        description: "1 to 64 credits, each applied at most once by its id (a replay answers the first \
            outcome); a refusal is final; `unknown` (overload, the store unavailable) means ask again. \
            Credits open the wallet if needed. Results come in request order.",
        parameters: vec![],
        request_body: Some(components.schema::<CreditBatch>()),
        responses: vec![(
            200,
            json_response("One result per credit.", components.schema::<CreditResults>()).build(),
        )],
        errors: &[
            ErrorCode::InvalidPhoneNumber,
            ErrorCode::InvalidAmount,
            ErrorCode::InvalidReference,
            ErrorCode::InvalidCode,
        ],
        reaches_ledger: false,
    }
}
