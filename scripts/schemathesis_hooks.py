"""schemathesis hooks for scripts/schemathesis.sh (loaded through SCHEMATHESIS_HOOKS).

One check replaces schemathesis' `positive_data_acceptance`, which the script
turns off: a request that conforms to docs/openapi.json must be accepted, with
two kinds of exception, both named here so that nothing else slips through.

- Answers about the state of the service, not the request: 404 (no such
  voucher, profile or redemption), 409 (exists already, already redeemed,
  insufficient funds, an Idempotency-Key reused), 410 (sold out), 403 (the
  voucher's window), 429 (a phone over its rate), 401 (a missing token is the
  script's business). schemathesis' own check allows all but 410.
- 400s for rules JSON Schema cannot state, by operation and error code (and,
  for one code that also has a schema-expressible meaning, by message):
  * createVoucher `invalid_window`: `starts_at` must be before `expires_at`;
  * getReport and getProfile `invalid_cursor`: a cursor must be a
    `next_cursor` this service returned;
  * createTransaction `invalid_amount` "would overflow": the balance plus the
    amount must fit in an i64.
Any other 4xx for schema-conforming data fails the run: the contract or the
code is wrong.
"""

import schemathesis

STATE_STATUSES = {401, 403, 404, 409, 410, 429}

UNSTATABLE_RULES = {
    ("createVoucher", "invalid_window"): None,
    ("getReport", "invalid_cursor"): None,
    ("getProfile", "invalid_cursor"): None,
    ("createTransaction", "invalid_amount"): "would overflow",
}


def _error(response):
    try:
        body = response.json()
    except Exception:
        return None, ""
    if not isinstance(body, dict):
        return None, ""
    return body.get("error"), str(body.get("message", ""))


@schemathesis.check
def positive_data_accepted_unless_unstatable(ctx, response, case):
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return None
    status = response.status_code
    # 5xx are not_a_server_error's to report.
    if status < 400 or status >= 500 or status in STATE_STATUSES:
        return None
    code, message = _error(response)
    operation_id = case.operation.definition.raw.get("operationId")
    if status == 400 and (operation_id, code) in UNSTATABLE_RULES:
        needle = UNSTATABLE_RULES[(operation_id, code)]
        if needle is None or needle in message:
            return None
    raise AssertionError(
        f"Schema-valid request refused: {status} {code!r} ({message}) on {operation_id}; "
        "the contract (docs/openapi.json) or the code is wrong"
    )
