//! voucherd: lets a crowd race for a limited voucher without ever over-redeeming,
//! double-crediting or losing an acknowledged redemption.
//!
//! Where to look (the design, with the redemption path and what each seam
//! promises, is in `docs/DESIGN.md`):
//!
//! - [`http`]: the server loop (connection cap, timeouts, head checks), one
//!   module per endpoint (`http::endpoints`: its route row with method, path,
//!   access rule and metrics label, its handler, its bodies, its description in
//!   the contract), the table's lookup (`http::routes`), shared DTOs, tokens, the
//!   one error → HTTP mapping, and the OpenAPI contract built from the table
//!   (`http::openapi`, `docs/openapi.json`). **A new route** is a module in
//!   `http::endpoints` and its line in the list there; routing, dispatch and the
//!   contract (which does not compile without its description) follow.
//! - [`service`]: one function per use case; the per-phone rate limit
//!   ([`rate_limit`]) and the fast path that rejects from the in-memory [`catalog`].
//! - [`actors`]: voucher shards (own leased slots, hand one to each contender),
//!   wallet actors (one user's writes in order), and their supervisor (restarts
//!   with a budget, then stops the process).
//! - [`store`]: the ledger seam in two halves ([`store::VoucherLedger`],
//!   [`store::WalletLedger`]; [`store::Ledger`] is both), the durable truth:
//!   embedded redb (the default), PostgreSQL/CockroachDB, and ScyllaDB (the CAS
//!   ledger of `store::cas` over the CQL adapter of `store::scylla`, with its LWT
//!   metrics in `store::cas::observed`). **A new
//!   ledger backend** is a module here that passes `tests/ledger_conformance/`,
//!   calls the shared wallet rules in [`domain::wallet`], and is opened in [`wiring`].
//! - [`redemption`]: the split-mode protocol (claim → credit → settle, recovery),
//!   independent of backends and transport, and simulated in `tests/simulation/`;
//!   [`wallet_client`] (the voucher service's batching client of the wallet
//!   service) and [`recovery`] (the task that finishes pending redemptions).
//! - [`slots`]: the [`slots::SlotSource`] seam (local pool, Redis leases). **A new
//!   slot source** is a module here that passes `tests/slot_conformance.rs`, chosen
//!   in [`wiring`].
//! - [`app`], [`wiring`], [`config`], [`role`]: building the app from its
//!   settings; **a new role** (which halves, actors and routes exist) is decided
//!   there, and each route of the table says which role serves it.
//! - [`domain`], [`error`], [`clock`]: validated values and shared rules, the
//!   closed error enum, the injected time.
//! - [`metrics`], [`readiness`], [`limits`]: observability (readiness is exported
//!   too, as `voucherd_ready`), `/readyz` reasons, and every bound with its reason.
//!   Dashboards, alerts and deployments are in `deploy/` (`docs/OPERATING.md`).
//!
//! Invariants (see `docs/DESIGN.md`): I1 limit, I2 unique, I3 credited, I4
//! durable, I5 balance.

pub mod app;
pub mod config;
pub mod http;
pub mod wallet_client;
pub mod wiring;

pub use app::App;
pub use config::Settings;
