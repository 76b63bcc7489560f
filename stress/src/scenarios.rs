//! What each request of a scenario is, derived from its number alone.
//!
//! `Workload::op(n)` decides request n's operation, user and voucher; the
//! executor turns it into an HTTP request with `Workload::request` and hands
//! successful answers back through `on_success`, which keeps the only state
//! that grows with the run: the redemptions answered 200 (bounded by the sum
//! of the voucher limits).

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use hyper::{Method, Request, Uri};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::client::{encode_segment, path_uri, Body, Conn, Target};
use crate::users::{hash3, Crowd, UserSpace};

#[derive(Debug, Clone, Serialize)]
pub struct VoucherSpec {
    pub code: String,
    pub amount: i64,
    pub limit: u64,
}

/// A redemption the service answered 200 to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Winner {
    pub voucher: u32,
    pub phone: String,
    pub redemption_id: String,
}

/// Relative shares of the mixed scenario's operations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MixWeights {
    pub redeem: f64,
    pub profile: f64,
    pub tx: f64,
}

impl MixWeights {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut m = MixWeights {
            redeem: 0.0,
            profile: 0.0,
            tx: 0.0,
        };
        for part in s.split(',') {
            let (k, v) = part
                .trim()
                .split_once('=')
                .ok_or_else(|| format!("mix entry {part:?}: expected NAME=WEIGHT"))?;
            let w: f64 = v
                .parse()
                .ok()
                .filter(|w: &f64| w.is_finite() && *w >= 0.0)
                .ok_or_else(|| format!("mix weight {v:?} must be a number >= 0"))?;
            match k {
                "redeem" => m.redeem = w,
                "profile" => m.profile = w,
                "tx" => m.tx = w,
                _ => return Err(format!("mix entry {k:?}: expected redeem, profile or tx")),
            }
        }
        if m.redeem + m.profile + m.tx <= 0.0 {
            return Err("mix weights sum to zero".into());
        }
        Ok(m)
    }
}

#[derive(Debug, Clone)]
pub enum Kind {
    Healthz,
    Flash,
    Profiles {
        balance: i64,
    },
    Mixed {
        /// Cumulative thresholds on a 64-bit coin: below `redeem` redeems,
        /// below `profile` reads a profile, the rest are transactions.
        redeem: u64,
        profile: u64,
        tx_amount: i64,
        debit: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Healthz,
    Redeem { voucher: u32, user: u64 },
    CreateProfile { user: u64 },
    GetProfile { user: u64 },
    Transaction { user: u64, amount: i64, n: u64 },
}

pub struct Workload {
    kind: Kind,
    crowd: Crowd,
    users: UserSpace,
    seed: u64,
    pub vouchers: Vec<VoucherSpec>,
    /// Distinguishes this run's idempotency keys from earlier runs'.
    run_tag: String,
    winners: Mutex<Vec<Winner>>,
    anomalies: Mutex<Vec<String>>,
    /// Wallets that took a transaction, so verification can check their
    /// balances (I5) too; bounded, like everything the run keeps.
    tx_wallets: Mutex<Vec<String>>,
}

const MAX_ANOMALIES: usize = 100;
const MAX_TX_WALLETS: usize = 1000;

fn share_threshold(share: f64) -> u64 {
    (share.clamp(0.0, 1.0) * 2f64.powi(64)).min(u64::MAX as f64) as u64
}

#[derive(Deserialize)]
struct RedeemReply {
    redemption_id: String,
    phone_number: String,
    code: String,
    amount: i64,
}

impl Workload {
    pub fn new(kind: Kind, crowd: Crowd, users: UserSpace, seed: u64, run_tag: String) -> Self {
        Workload {
            kind,
            crowd,
            users,
            seed,
            vouchers: Vec::new(),
            run_tag,
            winners: Mutex::new(Vec::new()),
            anomalies: Mutex::new(Vec::new()),
            tx_wallets: Mutex::new(Vec::new()),
        }
    }

    pub fn healthz(crowd: Crowd, users: UserSpace) -> Self {
        Self::new(Kind::Healthz, crowd, users, 0, String::new())
    }

    pub fn mixed_kind(mix: MixWeights, tx_amount: i64, debit_share: f64) -> Kind {
        let sum = mix.redeem + mix.profile + mix.tx;
        Kind::Mixed {
            redeem: share_threshold(mix.redeem / sum),
            profile: share_threshold((mix.redeem + mix.profile) / sum),
            tx_amount,
            debit: share_threshold(debit_share),
        }
    }

    #[cfg(test)]
    pub fn users(&self) -> &UserSpace {
        &self.users
    }

    /// The operation of request `n`. Repeats re-send their origin's attempt.
    pub fn op(&self, n: u64) -> Op {
        let origin = self.crowd.origin(n);
        let v = self.vouchers.len().max(1) as u64;
        match self.kind {
            Kind::Healthz => Op::Healthz,
            Kind::Flash => Op::Redeem {
                voucher: (origin % v) as u32,
                user: origin,
            },
            Kind::Profiles { .. } => Op::CreateProfile { user: origin },
            Kind::Mixed {
                redeem,
                profile,
                tx_amount,
                debit,
            } => {
                let coin = hash3(self.seed, 3, origin);
                if coin < redeem {
                    Op::Redeem {
                        voucher: (origin % v) as u32,
                        user: origin,
                    }
                } else if coin < profile {
                    // Read the wallet of some earlier request's user, so reads
                    // find wallets that the crowd's credits have created.
                    let earlier = hash3(self.seed, 5, n) % n.max(1);
                    Op::GetProfile {
                        user: self.crowd.origin(earlier),
                    }
                } else {
                    let amount = if hash3(self.seed, 4, n) < debit {
                        -tx_amount
                    } else {
                        tx_amount
                    };
                    Op::Transaction {
                        user: origin,
                        amount,
                        n,
                    }
                }
            }
        }
    }

    pub fn request(&self, target: &Target, op: &Op) -> Request<Body> {
        match *op {
            Op::Healthz => target.request(Method::GET, Uri::from_static("/healthz"), None),
            Op::Redeem { voucher, user } => {
                let mut body = Vec::with_capacity(96);
                let _ = write!(
                    body,
                    r#"{{"phone_number":"{}","code":"{}"}}"#,
                    self.users.phone(user),
                    self.vouchers[voucher as usize].code
                );
                target.request(
                    Method::POST,
                    Uri::from_static("/api/vouchers/redeem"),
                    Some(Bytes::from(body)),
                )
            }
            Op::CreateProfile { user } => {
                let balance = match self.kind {
                    Kind::Profiles { balance } => balance,
                    _ => 0,
                };
                let mut body = Vec::with_capacity(64);
                let _ = write!(
                    body,
                    r#"{{"phone_number":"{}","balance":{balance}}}"#,
                    self.users.phone(user)
                );
                target.admin_request(
                    Method::POST,
                    Uri::from_static("/api/profiles"),
                    Some(Bytes::from(body)),
                )
            }
            Op::GetProfile { user } => {
                let phone = self.users.phone(user);
                let path = format!("/api/profiles/{}?limit=10", encode_segment(phone.as_str()));
                target.admin_request(Method::GET, path_uri(path), None)
            }
            Op::Transaction { user, amount, n } => {
                let mut body = Vec::with_capacity(96);
                let _ = write!(
                    body,
                    r#"{{"phone_number":"{}","amount":{amount},"reference":"stress"}}"#,
                    self.users.phone(user)
                );
                let mut req = target.admin_request(
                    Method::POST,
                    Uri::from_static("/api/transactions"),
                    Some(Bytes::from(body)),
                );
                let mut key = String::with_capacity(48);
                let _ = write!(key, "stress-{}-{n}", self.run_tag);
                if let Ok(v) = key.parse() {
                    req.headers_mut().insert("idempotency-key", v);
                }
                req
            }
        }
    }

    /// Keeps what verification needs from a 2xx answer: only redemptions.
    pub fn on_success(&self, op: &Op, body: &[u8]) {
        if let Op::Transaction { user, .. } = *op {
            let mut w = self.tx_wallets.lock();
            if w.len() < MAX_TX_WALLETS {
                w.push(self.users.phone(user).to_string());
            }
            return;
        }
        let Op::Redeem { voucher, user } = *op else {
            return;
        };
        let spec = &self.vouchers[voucher as usize];
        let phone = self.users.phone(user);
        match serde_json::from_slice::<RedeemReply>(body) {
            Ok(r) => {
                if r.phone_number != phone.as_str()
                    || r.code != spec.code
                    || r.amount != spec.amount
                {
                    self.anomaly(format!(
                        "redeem {} {} answered 200 for {} {} amount {}",
                        spec.code, phone, r.code, r.phone_number, r.amount
                    ));
                }
                self.winners.lock().push(Winner {
                    voucher,
                    phone: phone.to_string(),
                    redemption_id: r.redemption_id,
                });
            }
            Err(e) => self.anomaly(format!(
                "redeem {} {phone}: unreadable 200 body ({e}): {}",
                spec.code,
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )),
        }
    }

    fn anomaly(&self, msg: String) {
        let mut a = self.anomalies.lock();
        if a.len() < MAX_ANOMALIES {
            a.push(msg);
        }
    }

    pub fn winners(&self) -> Vec<Winner> {
        self.winners.lock().clone()
    }

    pub fn tx_wallets(&self) -> Vec<String> {
        self.tx_wallets.lock().clone()
    }

    pub fn anomalies(&self) -> Vec<String> {
        self.anomalies.lock().clone()
    }

    /// Creates this run's vouchers (fails the run if any cannot be created).
    pub async fn create_vouchers(
        &mut self,
        target: &Arc<Target>,
        prefix: &str,
        count: u32,
        amount: i64,
        limit: u64,
    ) -> Result<()> {
        let mut conn = Conn::new(target.clone());
        for v in 0..count {
            let mut code = String::with_capacity(prefix.len() + 8);
            let _ = write!(code, "{prefix}-{v}");
            let body = serde_json::json!({"code": code, "amount": amount, "limit": limit});
            let req = target.admin_request(
                Method::POST,
                Uri::from_static("/api/vouchers"),
                Some(Bytes::from(body.to_string())),
            );
            let (status, reply) = conn
                .send(req, Duration::from_secs(30))
                .await
                .map_err(|f| anyhow::anyhow!("creating voucher {code}: {}", f.code()))
                .with_context(|| format!("is voucherd listening at {}?", target.base))?;
            if status.as_u16() != 201 {
                bail!(
                    "creating voucher {code}: HTTP {status}: {}",
                    String::from_utf8_lossy(&reply)
                );
            }
            self.vouchers.push(VoucherSpec {
                code,
                amount,
                limit,
            });
        }
        Ok(())
    }
}

/// A voucher-code prefix unique to this run, so reruns against the same store
/// do not collide with earlier vouchers.
pub fn default_code_prefix() -> String {
    let mut secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Base 36 keeps codes short.
    let mut digits = Vec::new();
    while secs > 0 {
        digits.push(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"[(secs % 36) as usize]);
        secs /= 36;
    }
    digits.reverse();
    // The process id keeps two runs started in the same second apart.
    format!(
        "FLASH{}-{}",
        String::from_utf8_lossy(&digits),
        std::process::id()
    )
}

/// Voucher codes must match `[A-Za-z0-9_-]{1,64}`; ours append `-<index>`.
pub fn check_code_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty()
        || prefix.len() > 52
        || !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        bail!("--code-prefix {prefix:?} must be 1-52 characters of [A-Za-z0-9_-]");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flash(vouchers: u32) -> Workload {
        let mut w = Workload::new(
            Kind::Flash,
            Crowd::new(5, 0.2).expect("valid"),
            UserSpace::new(1000, 5, "+98912").expect("valid"),
            5,
            "t".into(),
        );
        for v in 0..vouchers {
            w.vouchers.push(VoucherSpec {
                code: format!("C-{v}"),
                amount: 10,
                limit: 3,
            });
        }
        w
    }

    #[test]
    fn repeats_resend_the_same_attempt() {
        let w = flash(3);
        let c = Crowd::new(5, 0.2).expect("valid");
        for n in 0..10_000 {
            assert_eq!(w.op(n), w.op(c.origin(n)));
        }
    }

    #[test]
    fn winners_are_recorded_and_anomalies_flagged() {
        let w = flash(1);
        let op = w.op(0);
        let Op::Redeem { user, .. } = op else {
            panic!("redeem expected")
        };
        let phone = w.users().phone(user).to_string();
        let ok = format!(
            r#"{{"redemption_id":"r1","code":"C-0","phone_number":"{phone}","amount":10,"balance":10}}"#
        );
        w.on_success(&op, ok.as_bytes());
        w.on_success(
            &op,
            br#"{"redemption_id":"r2","code":"C-0","phone_number":"+1","amount":10}"#,
        );
        w.on_success(&op, b"garbage");
        assert_eq!(w.winners().len(), 2);
        assert_eq!(w.winners()[0].redemption_id, "r1");
        assert_eq!(w.anomalies().len(), 2);
    }

    #[test]
    fn mix_parsing() {
        let m = MixWeights::parse("redeem=1,tx=3").expect("valid");
        assert_eq!((m.redeem, m.profile, m.tx), (1.0, 0.0, 3.0));
        assert!(MixWeights::parse("redeem=0").is_err());
        assert!(MixWeights::parse("foo=1").is_err());
        assert!(MixWeights::parse("redeem").is_err());
    }

    #[test]
    fn code_prefix_rules() {
        assert!(check_code_prefix(&default_code_prefix()).is_ok());
        assert!(check_code_prefix("bad prefix").is_err());
        assert!(check_code_prefix("").is_err());
    }
}
