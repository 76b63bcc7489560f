//! `GET /api/vouchers/report`: who redeemed a voucher, in winning order, paged.
//! Its fields come from the query string or, as the seed's client sends them,
//! from a JSON body on the GET.

use serde::{Deserialize, Serialize};
use serde_json::Number;
use utoipa::ToSchema;
use warp::http::{Method, StatusCode};
use warp::reply::Response;

use super::{respond, Endpoint, Inputs, Outcome, Query};
use crate::http::auth::ADMIN;
use crate::http::dto::{integer_of, page_request, parse_json, required_code};
use crate::http::openapi::{json_response, page_parameters, query, schemas, Components, Described};
use crate::http::routes::RouteSpec;
use crate::http::routes::Segment::Literal as L;
use voucherd_core::domain::{redemption_id, ReportEntry};
use voucherd_core::error::ErrorCode;
use voucherd_metrics::Route;
use voucherd_service::role::Serves;
use voucherd_service::service::{Report, Service};

/// Its row of the route table.
pub static ROUTE: RouteSpec = RouteSpec {
    endpoint: Endpoint::Report,
    label: Route::report,
    method: Method::GET,
    path: &[L("api"), L("vouchers"), L("report")],
    access: ADMIN,
    // The seed's client sends the report's fields as a JSON body on the GET.
    reads_body: true,
    serves: Serves::Vouchers,
};

/// The seed's report request, sent as a JSON body on GET.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ReportBody {
    pub code: Option<String>,
    pub limit: Option<Number>,
    pub offset: Option<Number>,
    pub cursor: Option<String>,
}

/// One winner in a report.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReportItem {
    #[schema(schema_with = schemas::uuid)]
    pub redemption_id: String,
    /// `pending` or `credited` (a void redemption left the report).
    #[schema(schema_with = schemas::reported_status)]
    pub status: &'static str,
    #[schema(schema_with = schemas::phone)]
    pub phone_number: String,
    #[schema(schema_with = schemas::timestamp)]
    pub redeemed_at: String,
}

/// A page of a voucher's winners, in winning order.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReportResponse {
    #[schema(schema_with = schemas::code)]
    pub code: String,
    /// The voucher's redemption count.
    #[schema(minimum = 0)]
    pub total: u32,
    /// The number of items in this page.
    #[schema(minimum = 0)]
    pub length: usize,
    pub redemptions: Vec<ReportItem>,
    /// Pass it back as `cursor` for the next page; null on the last page.
    #[schema(schema_with = schemas::next_cursor, required = true)]
    pub next_cursor: Option<String>,
}

impl From<Report> for ReportResponse {
    fn from(report: Report) -> Self {
        let redemptions: Vec<ReportItem> = report
            .page
            .items
            .into_iter()
            .map(
                |ReportEntry {
                     phone,
                     redeemed_at,
                     status,
                     ..
                 }| ReportItem {
                    redemption_id: redemption_id(&report.code, phone).to_string(),
                    status: status.as_str(),
                    phone_number: phone.to_string(),
                    redeemed_at: redeemed_at.to_rfc3339(),
                },
            )
            .collect();
        Self {
            code: report.code.to_string(),
            total: report.total,
            length: redemptions.len(),
            redemptions,
            next_cursor: report.page.next_cursor.map(|c| c.to_string()),
        }
    }
}

/// Answers a request of this route.
pub(super) async fn serve(service: &Service, inputs: Inputs) -> Response {
    let Inputs { query, body, .. } = inputs;
    respond(
        StatusCode::OK,
        async { handle(service, &query, &body?).await }.await,
    )
}

/// The report reads its fields from the query string, or (as the seed's client
/// does) from a JSON body on the GET; query fields win.
pub async fn handle(service: &Service, query: &Query, body: &[u8]) -> Outcome<ReportResponse> {
    let from_body: ReportBody = if body.iter().all(u8::is_ascii_whitespace) {
        ReportBody::default()
    } else {
        parse_json(body)?
    };
    // `5.0` is 5; anything else is read as written, and refused if not a page bound.
    let number = |n: &Option<serde_json::Number>| {
        n.as_ref()
            .map(|n| integer_of(n).map_or_else(|| n.to_string(), |i| i.to_string()))
    };
    let (body_limit, body_offset) = (number(&from_body.limit), number(&from_body.offset));
    let field = |name: &str, fallback: Option<String>| query.get(name).cloned().or(fallback);
    let code = required_code(field("code", from_body.code).as_deref())?;
    let page = page_request(
        field("limit", body_limit).as_deref(),
        field("offset", body_offset).as_deref(),
        field("cursor", from_body.cursor).as_deref(),
    )?;
    Ok(service.report(code, page).await?.into())
}

/// Its operation in the contract, beyond what its route row says.
pub(crate) fn describe(components: &mut Components) -> Described {
    Described {
        operation_id: "getReport",
        summary: "Who redeemed a voucher, in winning order, paged",
        description: "Ordered by slot (winning order). `next_cursor` is null on the last page; pass it \
            back as `cursor` for the next page (`offset` then skips within what follows it). For the \
            seed's client the same fields (`code`, `limit`, `offset`, `cursor`) may instead come as a \
            JSON body on this GET (query fields win; an unknown field is 400 `invalid_body`).",
        parameters: [
            vec![query("code", "The voucher code.", true, schemas::code())],
            page_parameters(),
        ]
        .concat(),
        request_body: None,
        responses: vec![(
            200,
            json_response("A page of winners.", components.schema::<ReportResponse>()).build(),
        )],
        errors: &[
            ErrorCode::InvalidCode,
            ErrorCode::InvalidPagination,
            ErrorCode::InvalidCursor,
            ErrorCode::MalformedJson,
            ErrorCode::InvalidBody,
            ErrorCode::VoucherNotFound,
        ],
        reaches_ledger: true,
    }
}
