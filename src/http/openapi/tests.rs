//! The contract cannot drift from the code: the committed file is what the code
//! generates, every route of the table is one operation with its access rule
//! as its security, every error it documents is one the error mapping gives
//! with that status, and the patterns are the validators' rules.

use std::collections::BTreeSet;

use serde_json::Value;
use warp::Reply;

use super::schemas::{
    CLIENT_REFERENCE_PATTERN, CODE_PATTERN, IDEMPOTENCY_KEY_PATTERN, PHONE_PATTERN,
    VOUCHER_REFERENCE_PATTERN,
};
use super::*;
use crate::http::endpoints::{Endpoint, ALL};
use crate::http::error::ApiError;
use voucherd_core::error::{Error, ErrorCode};
use voucherd_core::limits::{
    MAX_CODE_CHARS, MAX_CREDITS_PER_CALL, MAX_IDEMPOTENCY_KEY_BYTES, MAX_PAGE_LIMIT,
    MAX_PAGE_OFFSET, MAX_PHONE_DIGITS, MAX_REFERENCE_CHARS, MAX_VOUCHER_LIMIT, MIN_PHONE_DIGITS,
};

fn contract() -> Value {
    serde_json::from_str(&to_json()).expect("the contract is JSON")
}

/// The operation of a route, as the JSON document has it.
fn operation_of(contract: &Value, spec: &RouteSpec) -> Value {
    let path: String = spec
        .path
        .iter()
        .map(|segment| match segment {
            Segment::Literal(text) => format!("/{text}"),
            Segment::Param(name) => format!("/{{{name}}}"),
        })
        .collect();
    let method = spec.method.as_str().to_ascii_lowercase();
    contract["paths"][&path][&method].clone()
}

fn statuses_of(operation: &Value) -> BTreeSet<String> {
    operation["responses"]
        .as_object()
        .expect("responses")
        .keys()
        .cloned()
        .collect()
}

/// A response, following a `$ref` to the shared ones.
fn resolve<'a>(contract: &'a Value, response: &'a Value) -> &'a Value {
    match response["$ref"].as_str() {
        Some(reference) => {
            let name = reference.trim_start_matches("#/components/responses/");
            &contract["components"]["responses"][name]
        }
        None => response,
    }
}

/// The error codes an error response documents.
fn codes_of(response: &Value) -> Vec<String> {
    response["content"]["application/json"]["schema"]["allOf"][1]["properties"]["error"]["enum"]
        .as_array()
        .map(|codes| {
            codes
                .iter()
                .map(|code| code.as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_committed_contract_is_the_generated_one() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == to_json(),
        "docs/openapi.json differs from the contract the code generates; regenerate it with\n\
         \tcargo run -q -- openapi > docs/openapi.json\n\
         and review the diff"
    );
}

#[test]
fn the_contract_is_openapi_3_1() {
    let contract = contract();
    assert_eq!(contract["openapi"], "3.1.0");
    assert_eq!(contract["info"]["title"], "voucherd");
}

#[test]
fn every_route_of_the_table_is_one_operation_and_there_are_no_others() {
    let contract = contract();
    let mut documented = BTreeSet::new();
    for (path, item) in contract["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            documented.insert((method.to_ascii_uppercase(), path.clone()));
        }
    }
    let routed: BTreeSet<(String, String)> = ALL
        .iter()
        .map(|spec| (spec.method.to_string(), path_template(spec.path)))
        .collect();
    assert_eq!(documented, routed);
    let ids: BTreeSet<String> = ALL
        .iter()
        .map(|spec| operation_of(&contract, spec)["operationId"].to_string())
        .collect();
    assert_eq!(ids.len(), ALL.len(), "operation ids are unique");
}

#[test]
fn each_operation_is_secured_as_its_route_is() {
    let contract = contract();
    for spec in ALL {
        let operation = operation_of(&contract, spec);
        let expected = match spec.access {
            Access::Public => Value::Null,
            Access::Only(principals) => Value::Array(
                principals
                    .iter()
                    .map(|principal| {
                        let scheme = match principal {
                            Principal::Admin => ADMIN_SCHEME,
                            Principal::Service => SERVICE_SCHEME,
                        };
                        serde_json::json!({ scheme: [] })
                    })
                    .collect(),
            ),
        };
        assert_eq!(operation["security"], expected, "{:?}", spec.endpoint);
    }
    assert_eq!(contract["security"], Value::Null, "no default security");
    for scheme in [ADMIN_SCHEME, SERVICE_SCHEME] {
        let scheme = &contract["components"]["securitySchemes"][scheme];
        assert_eq!(
            (&scheme["type"], &scheme["scheme"]),
            (&Value::from("http"), &Value::from("bearer"))
        );
    }
}

#[test]
fn each_operation_documents_the_edge_answers_of_its_kind_of_route() {
    let contract = contract();
    for spec in ALL {
        let operation = operation_of(&contract, spec);
        let statuses = statuses_of(&operation);
        let has = |status: &str| statuses.contains(status);
        let name = format!("{:?}", spec.endpoint);
        assert_eq!(has("401"), spec.access != Access::Public, "{name}: 401");
        assert_eq!(has("413"), spec.reads_body, "{name}: 413");
        assert_eq!(has("408"), spec.reads_body, "{name}: 408");
        assert_eq!(has("421"), spec.serves != Serves::Any, "{name}: 421");
        assert!(
            has("400") && has("414") && has("431"),
            "{name}: 400/414/431"
        );
        assert!(
            statuses.iter().any(|status| status.starts_with('2')),
            "{name}: a success"
        );
        assert_eq!(
            operation["tags"],
            serde_json::json!([tag_of(spec.serves)]),
            "{name}: tag"
        );
        assert_eq!(
            operation.get("requestBody").is_some(),
            spec.reads_body && spec.endpoint != Endpoint::Report,
            "{name}: the body (the report's seed-compatible GET body is described, not declared)"
        );
    }
}

#[test]
fn every_documented_error_code_comes_with_its_status() {
    let contract = contract();
    for spec in ALL {
        let operation = operation_of(&contract, spec);
        for (status, response) in operation["responses"].as_object().expect("responses") {
            let response = resolve(&contract, response);
            let status: u16 = status.parse().expect("a numeric status");
            let codes = codes_of(response);
            if status < 400 || (spec.endpoint == Endpoint::Readyz && status == 503) {
                assert!(codes.is_empty());
                continue;
            }
            assert!(
                !codes.is_empty(),
                "{:?} {status} lists codes",
                spec.endpoint
            );
            for code in codes {
                let known = ErrorCode::ALL
                    .iter()
                    .find(|known| known.as_str() == code)
                    .unwrap_or_else(|| panic!("{code} is not an ErrorCode"));
                assert_eq!(known.status(), status, "{code} on {:?}", spec.endpoint);
            }
        }
    }
}

#[test]
fn the_error_mapping_gives_each_code_the_status_the_contract_says() {
    let mut errors = vec![
        ApiError::PayloadTooLarge,
        ApiError::NotFound,
        ApiError::MethodNotAllowed("GET".to_owned()),
        ApiError::Unauthorized,
        ApiError::BodyTimeout,
        ApiError::UriTooLong,
        ApiError::HeadersTooLarge,
        ApiError::AmbiguousFraming,
        ApiError::NotServedHere(Serves::Wallets),
        ApiError::NotServedHere(Serves::Vouchers),
    ];
    let domain = [
        Error::VoucherNotFound,
        Error::VoucherExists,
        Error::AlreadyRedeemed,
        Error::VoucherExhausted,
        Error::VoucherNotActive,
        Error::RedemptionNotFound,
        Error::ProfileNotFound,
        Error::ProfileExists,
        Error::InsufficientFunds,
        Error::IdempotencyKeyReused,
        Error::CreditRefused {
            reason: "refused".into(),
        },
        Error::SlotTaken,
        Error::RateLimited {
            retry_after_secs: 1,
        },
        Error::Overloaded,
        Error::unavailable("cause"),
        Error::not_written("cause"),
        Error::storage("cause"),
    ];
    errors.extend(domain.into_iter().map(ApiError::Domain));
    let mut given = Vec::new();
    for error in errors {
        let code = error.code();
        let response = error.into_response();
        assert_eq!(response.status().as_u16(), code.status(), "{code:?}");
        given.push(code);
    }
    // Every code is given by the mapping or is a validation code
    // (`Error::Invalid`, a 400).
    for known in ErrorCode::ALL {
        assert!(
            given.contains(known) || known.status() == 400,
            "{known:?} is given"
        );
    }
}

#[test]
fn the_patterns_are_the_validators_rules() {
    assert_eq!(
        CODE_PATTERN,
        format!("^[A-Za-z0-9_-]{{1,{MAX_CODE_CHARS}}}$")
    );
    assert_eq!(
        PHONE_PATTERN,
        format!(
            "^\\+[1-9][0-9]{{{},{}}}$",
            MIN_PHONE_DIGITS - 1,
            MAX_PHONE_DIGITS - 1
        )
    );
    assert_eq!(
        IDEMPOTENCY_KEY_PATTERN,
        format!("^[!-~]{{1,{MAX_IDEMPOTENCY_KEY_BYTES}}}$")
    );
    assert!(CLIENT_REFERENCE_PATTERN.ends_with(&format!("]{{0,{MAX_REFERENCE_CHARS}}}$")));
    assert!(VOUCHER_REFERENCE_PATTERN.ends_with(&format!("{{1,{MAX_CODE_CHARS}}}$")));
    let contract = contract();
    let schemas = &contract["components"]["schemas"];
    assert_eq!(
        schemas["CreditBatch"]["properties"]["credits"]["maxItems"],
        MAX_CREDITS_PER_CALL
    );
    assert_eq!(
        schemas["CreateVoucherBody"]["properties"]["limit"]["maximum"],
        MAX_VOUCHER_LIMIT
    );
    assert_eq!(
        schemas["TransactionBody"]["properties"]["reference"]["maxLength"],
        MAX_REFERENCE_CHARS
    );
    assert_eq!(
        schemas["CreateVoucherBody"]["properties"]["amount"]["maximum"],
        i64::MAX
    );
    let report = operation_of(&contract, ALL[3]);
    assert_eq!(report["operationId"], "getReport");
    for parameter in report["parameters"].as_array().expect("parameters") {
        match parameter["name"].as_str() {
            Some("limit") => assert_eq!(parameter["schema"]["maximum"], MAX_PAGE_LIMIT),
            Some("offset") => assert_eq!(parameter["schema"]["maximum"], MAX_PAGE_OFFSET),
            _ => {}
        }
    }
    // The validators take what the patterns take, at their bounds.
    let longest_code = "C".repeat(MAX_CODE_CHARS);
    assert!(voucherd_core::domain::VoucherCode::parse(&longest_code).is_ok());
    for phone in ["+12345678", "+123456789012345"] {
        assert!(
            voucherd_core::domain::PhoneNumber::parse(phone).is_ok(),
            "{phone}"
        );
    }
    let longest_reference = "r".repeat(MAX_REFERENCE_CHARS);
    assert!(voucherd_core::domain::parse_reference(&longest_reference).is_ok());
}

#[test]
fn every_path_parameter_has_a_rule() {
    let contract = contract();
    for spec in ALL {
        let operation = operation_of(&contract, spec);
        let parameters = operation["parameters"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for segment in spec.path {
            let Segment::Param(name) = segment else {
                continue;
            };
            let parameter = parameters
                .iter()
                .find(|p| p["name"] == *name && p["in"] == "path")
                .unwrap_or_else(|| panic!("{name} of {:?} is documented", spec.endpoint));
            assert_eq!(parameter["required"], true);
            assert!(
                parameter["schema"]["pattern"].is_string(),
                "{name} has a pattern"
            );
        }
    }
}

#[test]
fn the_redeem_answers_credited_with_200_and_pending_with_202() {
    let contract = contract();
    let redeem = operation_of(&contract, ALL[0]);
    assert_eq!(redeem["operationId"], "redeemVoucher");
    let status_of = |code: &str| {
        redeem["responses"][code]["content"]["application/json"]["schema"]["allOf"][1]["properties"]
            ["status"]["enum"]
            .clone()
    };
    assert_eq!(status_of("200"), serde_json::json!(["credited"]));
    assert_eq!(status_of("202"), serde_json::json!(["pending"]));
    let rate_limited = resolve(&contract, &redeem["responses"]["429"]);
    assert!(rate_limited["headers"]["Retry-After"].is_object());
    assert_eq!(
        codes_of(rate_limited),
        vec!["rate_limited".to_owned(), "overloaded".to_owned()]
    );
}

#[test]
fn links_name_operations_that_exist() {
    let contract = contract();
    let ids: BTreeSet<String> = ALL
        .iter()
        .filter_map(|spec| {
            operation_of(&contract, spec)["operationId"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    let mut links = 0;
    for spec in ALL {
        let operation = operation_of(&contract, spec);
        for response in operation["responses"]
            .as_object()
            .expect("responses")
            .values()
        {
            let Some(response_links) = response["links"].as_object() else {
                continue;
            };
            for link in response_links.values() {
                let target = link["operationId"]
                    .as_str()
                    .expect("operationId, camelCase");
                assert!(ids.contains(target), "{target}");
                links += 1;
            }
        }
    }
    assert!(links >= 5);
}
