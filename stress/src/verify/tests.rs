//! Planted violations: each invariant check of `check` must catch its own.

use super::*;

const AMOUNT: i64 = 50_000;

fn phone(i: usize) -> String {
    format!("+98912{i:07}")
}

fn rid(i: usize) -> String {
    format!("00000000-0000-5000-8000-{i:012}")
}

/// A consistent world: `n` winners of voucher GOAL (limit 100), each with
/// one credit plus an unrelated earlier credit, and every 200 seen.
fn clean(n: usize) -> Fetched {
    let entries: Vec<ReportEntry> = (0..n)
        .map(|i| ReportEntry {
            redemption_id: rid(i),
            phone_number: phone(i),
            status: Some("credited".to_owned()),
        })
        .collect();
    let wallets = (0..n)
        .map(|i| {
            let txs = vec![
                WalletTx {
                    id: rid(i),
                    amount: AMOUNT,
                    reference: Some("voucher:GOAL".into()),
                },
                WalletTx {
                    id: format!("other-{i}"),
                    amount: 7,
                    reference: Some("opening_balance".into()),
                },
            ];
            (
                phone(i),
                Some(Wallet {
                    balance: AMOUNT + 7,
                    transactions: txs,
                }),
            )
        })
        .collect();
    let seen = (0..n)
        .map(|i| Seen {
            code: "GOAL".into(),
            phone: phone(i),
            redemption_id: rid(i),
        })
        .collect();
    Fetched {
        vouchers: vec![VoucherReport {
            code: "GOAL".into(),
            amount: AMOUNT,
            limit: 100,
            total: n as u64,
            entries,
            redeemed: Some(n as u64),
            remaining: Some(100 - n.min(100) as u64),
        }],
        wallets,
        seen,
        told_redeemed: vec![ToldRedeemed {
            code: "GOAL".into(),
            phone: phone(0),
        }]
        .into_iter()
        .take(n)
        .collect(),
    }
}

fn invariants(f: &Fetched) -> Vec<&'static str> {
    let mut v: Vec<&str> = check(f).iter().map(|v| v.invariant).collect();
    v.dedup();
    v
}

#[test]
fn clean_run_passes() {
    assert!(check(&clean(100)).is_empty());
    assert!(check(&Fetched::default()).is_empty());
}

#[test]
fn more_winners_than_limit_fails_i1() {
    let f = clean(101);
    let v = check(&f);
    assert_eq!(invariants(&f), vec!["I1"]);
    assert_eq!(
        v[0].ids,
        vec![rid(100)],
        "the winner past the limit is named"
    );
}

#[test]
fn duplicate_phone_fails_i2() {
    let mut f = clean(10);
    f.vouchers[0].entries[3].phone_number = phone(2);
    // Keep I3/I4 out of the picture: wallet 2 also holds credit 3.
    let extra = f.wallets[&phone(3)].as_ref().unwrap().transactions[0].clone();
    let w2 = f.wallets.get_mut(&phone(2)).unwrap().as_mut().unwrap();
    w2.transactions.push(extra);
    w2.balance += AMOUNT;
    f.wallets.remove(&phone(3));
    f.seen.retain(|s| s.phone != phone(3));
    let v = check(&f);
    assert_eq!(invariants(&f), vec!["I2"]);
    assert_eq!(v[0].ids, vec![rid(2), rid(3)]);
    assert_eq!(v[0].phone.as_deref(), Some(phone(2).as_str()));
}

#[test]
fn missing_credit_fails_i3() {
    let mut f = clean(10);
    let w = f.wallets.get_mut(&phone(4)).unwrap().as_mut().unwrap();
    w.transactions.remove(0);
    w.balance = 7;
    let v = check(&f);
    assert_eq!(invariants(&f), vec!["I3"]);
    assert_eq!(v[0].ids, vec![rid(4)]);
}

#[test]
fn wrong_double_or_orphan_credits_fail_i3() {
    let mut f = clean(3);
    let w = f.wallets.get_mut(&phone(0)).unwrap().as_mut().unwrap();
    w.transactions[0].amount = 1;
    w.balance = 8;
    assert_eq!(invariants(&f), vec!["I3"]);

    let mut f = clean(3);
    let w = f.wallets.get_mut(&phone(1)).unwrap().as_mut().unwrap();
    w.transactions.push(w.transactions[0].clone());
    w.balance += AMOUNT;
    assert!(invariants(&f).contains(&"I3"));

    let mut f = clean(3);
    let w = f.wallets.get_mut(&phone(2)).unwrap().as_mut().unwrap();
    w.transactions.push(WalletTx {
        id: "ghost".into(),
        amount: AMOUNT,
        reference: Some("voucher:GOAL".into()),
    });
    w.balance += AMOUNT;
    let v = check(&f);
    assert_eq!(invariants(&f), vec!["I3"]);
    assert_eq!(v[0].ids, vec!["ghost".to_string()]);

    let mut f = clean(3);
    f.wallets.insert(phone(1), None);
    assert_eq!(invariants(&f), vec!["I3"]);
}

#[test]
fn credit_with_another_reference_fails_i3() {
    let mut f = clean(3);
    let w = f.wallets.get_mut(&phone(1)).unwrap().as_mut().unwrap();
    w.transactions[0].reference = Some("voucher:OTHER".into());
    let v = check(&f);
    assert_eq!(invariants(&f), vec!["I3"]);
    assert_eq!(v[0].ids, vec![rid(1)]);
    assert_eq!(v[0].phone.as_deref(), Some(phone(1).as_str()));
}

#[test]
fn unreported_200_fails_i4() {
    let mut f = clean(10);
    f.seen.push(Seen {
        code: "GOAL".into(),
        phone: phone(50),
        redemption_id: rid(50),
    });
    let v = check(&f);
    assert_eq!(invariants(&f), vec!["I4"]);
    assert_eq!(v[0].ids, vec![rid(50)]);

    let mut f = clean(10);
    f.seen[0].redemption_id = rid(99);
    assert_eq!(invariants(&f), vec!["I4"]);
}

#[test]
fn unreported_already_redeemed_fails_i4() {
    let mut f = clean(10);
    f.told_redeemed.push(ToldRedeemed {
        code: "GOAL".into(),
        phone: phone(50),
    });
    let v = check(&f);
    assert_eq!(invariants(&f), vec!["I4"]);
    assert_eq!(v[0].phone.as_deref(), Some(phone(50).as_str()));
}

#[test]
fn bad_balance_fails_i5() {
    let mut f = clean(10);
    f.wallets
        .get_mut(&phone(5))
        .unwrap()
        .as_mut()
        .unwrap()
        .balance += 1;
    let v = check(&f);
    assert_eq!(invariants(&f), vec!["I5"]);
    assert_eq!(v[0].phone.as_deref(), Some(phone(5).as_str()));

    // Consistent sum but negative.
    let mut f = clean(1);
    let w = f.wallets.get_mut(&phone(0)).unwrap().as_mut().unwrap();
    w.transactions[1].amount = -AMOUNT - 1;
    w.balance = -1;
    assert_eq!(invariants(&f), vec!["I5"]);
}

#[test]
fn inconsistent_report_is_flagged() {
    let mut f = clean(10);
    f.vouchers[0].total = 11;
    f.vouchers[0].redeemed = Some(11);
    assert_eq!(invariants(&f), vec!["REPORT"]);
    let mut f = clean(10);
    f.vouchers[0].redeemed = Some(9);
    assert_eq!(invariants(&f), vec!["REPORT"]);
    let mut f = clean(10);
    f.vouchers[0].redeemed = Some(101);
    assert_eq!(invariants(&f), vec!["I1", "REPORT"]);
    let mut f = clean(10);
    f.vouchers[0].remaining = Some(91);
    assert_eq!(invariants(&f), vec!["REPORT"]);
}
