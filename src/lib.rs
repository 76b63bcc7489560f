//! voucherd: lets a crowd race for a limited voucher without ever over-redeeming,
//! double-crediting or losing an acknowledged redemption.
//!
//! - [`http`]: the server loop (connection cap, timeouts), warp routes with their
//!   access rule, DTOs, and the one error → HTTP mapping.
//! - [`rate_limit`]: the per-phone redemption rate.
//! - [`service`]: one function per use case; the in-memory fast path for rejections.
//! - [`actors`]: voucher shard actors (own slots, hand them to contenders), wallet
//!   actors (serialise a user's writes), and their supervisor.
//! - [`slots`]: the [`slots::SlotSource`] seam: where shards lease slot numbers.
//! - [`store`]: the [`store::Ledger`] seam, the durable truth; embedded redb by default.
//! - [`domain`], [`error`]: validated values and the closed error enum.
//! - [`metrics`], [`config`], [`limits`]: observability, configuration, every bound.
//! - [`wiring`]: which ledger a `--store` value opens, which slot source starts.
//! - [`readiness`]: why the instance should not get traffic (`/readyz`).
//!
//! Invariants (see DESIGN.md): I1 limit, I2 unique, I3 credited, I4 durable, I5 balance.

pub mod actors;
pub mod app;
pub mod clock;
pub mod config;
pub mod domain;
pub mod error;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod rate_limit;
pub mod readiness;
pub mod service;
pub mod slots;
pub mod store;
pub mod wiring;

pub use app::App;
pub use config::Settings;
