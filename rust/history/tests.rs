//! The projector against a real database in a temporary directory: rows per record type, the
//! skip of projected records, the gap error, rollback, balances.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use rusqlite::Connection;

use super::project::Projector;
use super::{Seed, SeedAccount, SeedPayment, SeedRefund};
use crate::error::CoreError;
use crate::state::records::{
    encode, logged_type, Metadata, PaymentRecord, RefundRecord, OPERATION_PAYMENT_WITH_CONSENT,
    OPERATION_REFUND,
};
use crate::wal::encode_into;

const FINGERPRINT: &str = "abababababababababababababababababababababababababababababababab";
const OPEN_ACCOUNT: u16 = 257;
const DEPOSIT: u16 = 258;
const WITHDRAW: u16 = 259;
const MERCHANT_CREATED: u16 = 262;
const DELIVERIES: u16 = 265;
const ALL: u64 = u64::MAX;

fn database() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let directory = std::env::temp_dir().join(format!(
        "instapay-history-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&directory).unwrap();
    let path = directory.join("history.db");
    let _ = std::fs::remove_file(&path);
    path
}

fn account(id: &str, amount: i64, failure: Option<&str>) -> Vec<u8> {
    rmp_serde::to_vec(&(id, "EUR", amount, false, None::<()>, failure)).unwrap()
}

fn payment(payer: &str, amount: i64, failure: Option<&'static str>) -> Vec<u8> {
    let pairs = Metadata(vec![("b", "2"), ("a", "1")]);
    encode(&PaymentRecord {
        merchant_id: "m1",
        order_id: "o-1",
        payer,
        settlement_account: "shop",
        amount,
        currency: "EUR",
        description: Some("tea"),
        metadata: Some(pairs),
        created_s: 1_700_000_000,
        idempotency_key: Some("m1\0o:o-1"),
        fingerprint: FINGERPRINT,
        failure_code: failure,
    })
}

fn refund(payment_id: &str, amount: i64, failure: Option<&'static str>) -> Vec<u8> {
    encode(&RefundRecord {
        payment_id,
        merchant_id: "m1",
        amount_requested: Some(amount),
        reason: None,
        created_s: 1_700_000_001,
        idempotency_key: None,
        fingerprint: FINGERPRINT,
        amount,
        failure_code: failure,
    })
}

/// Records numbered from `lsn_first`, framed as the log holds them.
fn frames(lsn_first: u64, records: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (lsn, (record_type, payload)) in (lsn_first..).zip(records) {
        encode_into(&mut out, lsn, *record_type, payload);
    }
    out
}

/// LSN 1 and 2 open alice and shop, 3 deposits 1000 to alice, 4 pays 300 to shop.
fn opening() -> Vec<(u16, Vec<u8>)> {
    vec![
        (OPEN_ACCOUNT, account("alice", 0, None)),
        (OPEN_ACCOUNT, account("shop", 0, None)),
        (DEPOSIT, account("alice", 1000, None)),
        (
            logged_type(OPERATION_PAYMENT_WITH_CONSENT),
            payment("alice", 300, None),
        ),
    ]
}

fn count(path: &PathBuf, table: &str) -> i64 {
    let connection = Connection::open(path).unwrap();
    connection
        .query_row(&format!("SELECT count(*) FROM {table}"), [], |row| row.get(0))
        .unwrap()
}

fn balance(path: &PathBuf, account_id: &str) -> i64 {
    let connection = Connection::open(path).unwrap();
    connection
        .query_row(
            "SELECT balance FROM accounts WHERE account_id = ?1",
            [account_id],
            |row| row.get(0),
        )
        .unwrap()
}

fn entries(path: &PathBuf, account_id: &str) -> Vec<(i64, String, i64, i64)> {
    let connection = Connection::open(path).unwrap();
    let mut statement = connection
        .prepare(
            "SELECT lsn, kind, amount, balance_after FROM account_entries WHERE account_id = ?1 ORDER BY lsn",
        )
        .unwrap();
    let rows = statement
        .query_map([account_id], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })
        .unwrap();
    rows.collect::<Result<_, _>>().unwrap()
}

fn deliveries() -> Vec<u8> {
    let outcomes = vec![
        (4, 10, "200", true, None::<i64>, 0),
        (6, 11, "timeout", false, Some(20), 1),
    ];
    rmp_serde::to_vec(&(outcomes,)).unwrap()
}

#[test]
fn every_record_type_makes_its_rows() {
    let path = database();
    let mut projector = Projector::open(&path).unwrap();
    let mut records = opening();
    records.extend([
        (
            logged_type(OPERATION_PAYMENT_WITH_CONSENT),
            payment("alice", 5000, Some("insufficient_funds")),
        ),
        (logged_type(OPERATION_REFUND), refund("pay_4", 100, None)),
        (
            logged_type(OPERATION_REFUND),
            refund("pay_5", 100, Some("payment_not_refundable")),
        ),
        (WITHDRAW, account("alice", 50, None)),
        (WITHDRAW, account("alice", 1_000_000, Some("insufficient_funds"))),
        (MERCHANT_CREATED, b"\x96\xa2m1".to_vec()),
        (DELIVERIES, deliveries()),
    ]);
    let data = frames(1, &records);
    let step = projector.project(&data, 0, 1000, ALL).unwrap();
    assert_eq!(
        (step.end, step.lsn, step.records, step.legacy),
        (data.len(), 11, 11, None)
    );
    drop(projector);
    assert_eq!(count(&path, "payments"), 2);
    assert_eq!(count(&path, "refunds"), 2);
    assert_eq!(count(&path, "delivery_attempts"), 2);
    assert_eq!(count(&path, "accounts"), 2);
    let connection = Connection::open(&path).unwrap();
    let paid: (String, Option<String>, i64, Option<String>) = connection
        .query_row(
            "SELECT status, failure_code, amount_refunded, metadata FROM payments WHERE lsn = 4",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
        )
        .unwrap();
    assert_eq!(
        paid,
        ("succeeded".into(), None, 100, Some(r#"{"b":"2","a":"1"}"#.into()))
    );
    let declined: (String, String) = connection
        .query_row("SELECT status, currency FROM refunds WHERE lsn = 7", [], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .unwrap();
    // A refund of a payment that did not succeed has no currency, as the results store says.
    assert_eq!(declined, ("failed".into(), String::new()));
    assert_eq!(balance(&path, "alice"), 1000 - 300 + 100 - 50);
    assert_eq!(balance(&path, "shop"), 300 - 100);
    let alice = entries(&path, "alice");
    assert_eq!(
        alice,
        [
            (3, "deposit".into(), 1000, 1000),
            (4, "payment".into(), -300, 700),
            (6, "refund".into(), 100, 800),
            (8, "withdrawal".into(), -50, 750),
        ]
    );
}

#[test]
fn records_already_projected_add_nothing_and_balances_survive_a_reopen() {
    let path = database();
    let data = frames(1, &opening());
    let mut projector = Projector::open(&path).unwrap();
    projector.project(&data, 0, 2, ALL).unwrap();
    assert_eq!(projector.lsn(), 2);
    // The whole batch again: the first two are skipped, the rest applied once.
    let step = projector.project(&data, 0, 1000, ALL).unwrap();
    assert_eq!((step.lsn, step.records), (4, 2));
    let again = projector.project(&data, 0, 1000, ALL).unwrap();
    assert_eq!((again.lsn, again.records, again.rows), (4, 0, 0));
    drop(projector);
    let mut projector = Projector::open(&path).unwrap();
    assert_eq!(projector.lsn(), 4);
    let more = frames(5, &[(DEPOSIT, account("alice", 1, None))]);
    projector.project(&more, 0, 1000, ALL).unwrap();
    assert_eq!(count(&path, "payments"), 1);
    assert_eq!(
        entries(&path, "alice").last(),
        Some(&(5, "deposit".into(), 1, 701))
    );
}

#[test]
fn records_above_the_last_lsn_asked_wait() {
    let path = database();
    let data = frames(1, &opening());
    let mut projector = Projector::open(&path).unwrap();
    let step = projector.project(&data, 0, 1000, 3).unwrap();
    assert_eq!(step.lsn, 3);
    let step = projector.project(&data, step.end, 1000, ALL).unwrap();
    assert_eq!(step.lsn, 4);
}

#[test]
fn a_gap_is_refused_naming_both_lsns() {
    let path = database();
    let mut projector = Projector::open(&path).unwrap();
    let data = frames(3, &opening());
    let error = projector.project(&data, 0, 1000, ALL).unwrap_err();
    assert_eq!(error, CoreError::HistoryGap { expected: 1, got: 3 });
    let message = error.to_string();
    assert!(
        message.contains("LSN 1 next") && message.contains("LSN 3"),
        "{message}"
    );
    assert!(message.contains("records 1 to 2 are missing"), "{message}");
    assert_eq!(projector.lsn(), 0);
}

#[test]
fn a_failing_record_rolls_the_whole_call_back() {
    let path = database();
    let mut projector = Projector::open(&path).unwrap();
    let mut records = opening();
    records.push((DEPOSIT, b"\x93\x01\x02\x03".to_vec()));
    let data = frames(1, &records);
    let error = projector.project(&data, 0, 1000, ALL).unwrap_err();
    assert!(error.to_string().contains("account"), "{error}");
    assert_eq!(projector.lsn(), 0);
    for table in ["payments", "accounts", "account_entries"] {
        assert_eq!(count(&path, table), 0, "{table}");
    }
    // Money of an account never opened: refused too, and the balances held stay as they were.
    let good = frames(1, &opening());
    projector.project(&good, 0, 1000, ALL).unwrap();
    let stray = frames(
        5,
        &[
            (DEPOSIT, account("alice", 5, None)),
            (DEPOSIT, account("bob", 5, None)),
        ],
    );
    let error = projector.project(&stray, 0, 1000, ALL).unwrap_err();
    assert!(error.to_string().contains("bob"), "{error}");
    let next = frames(5, &[(DEPOSIT, account("alice", 5, None))]);
    projector.project(&next, 0, 1000, ALL).unwrap();
    assert_eq!(
        entries(&path, "alice").last(),
        Some(&(5, "deposit".into(), 5, 705))
    );
}

#[test]
fn a_version_zero_record_is_handed_back_and_others_pass() {
    let path = database();
    let mut projector = Projector::open(&path).unwrap();
    let data = frames(1, &[(6, b"[]".to_vec()), (2, b"[\"alice\"]".to_vec())]);
    let step = projector.project(&data, 0, 1000, ALL).unwrap();
    // The JSON merchant record only moves the LSN; the JSON deposit waits for its conversion.
    assert_eq!(step.lsn, 1);
    let legacy = step.legacy.unwrap();
    assert_eq!((legacy.lsn, legacy.record_type), (2, 2));
    assert_eq!(step.end, legacy.payload_at - crate::wal::HEADER_LEN);
}

#[test]
fn a_database_of_another_version_is_refused_and_kept() {
    let path = database();
    drop(Projector::open(&path).unwrap());
    Connection::open(&path)
        .unwrap()
        .execute("UPDATE projection SET schema_version = 99", [])
        .unwrap();
    let error = Projector::open(&path).err().unwrap();
    let message = error.to_string();
    assert!(
        message.contains("99") && message.contains("version 1") && message.contains("history.db"),
        "{message}"
    );
    let other = database();
    Connection::open(&other)
        .unwrap()
        .execute("CREATE TABLE mine (x)", [])
        .unwrap();
    let error = Projector::open(&other).err().unwrap();
    assert!(error.to_string().contains("not a history database"), "{error}");
    assert_eq!(count(&other, "mine"), 0);
}

fn seeded() -> Seed {
    Seed {
        lsn: 40,
        accounts: vec![
            SeedAccount {
                account_id: "alice".to_owned(),
                currency: "EUR".to_owned(),
                balance: 700,
            },
            SeedAccount {
                account_id: "shop".to_owned(),
                currency: "EUR".to_owned(),
                balance: 300,
            },
        ],
        payments: vec![SeedPayment {
            lsn: 38,
            merchant_id: "m1".to_owned(),
            order_id: "o-1".to_owned(),
            payer: "alice".to_owned(),
            settlement_account: "shop".to_owned(),
            amount: 400,
            currency: "EUR".to_owned(),
            failure_code: None,
            amount_refunded: 100,
            description: None,
            metadata: Some("{\"a\":\"1\"}".to_owned()),
            created: 1_700_000_000,
        }],
        refunds: vec![SeedRefund {
            lsn: 39,
            payment_id: "pay_38".to_owned(),
            merchant_id: "m1".to_owned(),
            amount: 100,
            currency: "EUR".to_owned(),
            failure_code: None,
            reason: None,
            created: 1_700_000_001,
        }],
    }
}

#[test]
fn a_seed_writes_accounts_with_opening_entries_and_results_at_its_lsn() {
    let path = database();
    let mut projector = Projector::open(&path).unwrap();
    assert_eq!(projector.seed(&seeded()).unwrap(), 6);
    assert_eq!((projector.lsn(), projector.durable_lsn()), (40, 40));
    let connection = Connection::open(&path).unwrap();
    let entries: Vec<(String, i64, String, i64, i64)> = connection
        .prepare(
            "SELECT account_id, lsn, kind, amount, balance_after FROM account_entries ORDER BY account_id",
        )
        .unwrap()
        .query_map([], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        entries,
        vec![
            ("alice".to_owned(), 40, "opening".to_owned(), 700, 700),
            ("shop".to_owned(), 40, "opening".to_owned(), 300, 300),
        ]
    );
    let paid: (i64, String, i64, String) = connection
        .query_row(
            "SELECT lsn, status, amount_refunded, metadata FROM payments",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
        )
        .unwrap();
    assert_eq!(
        paid,
        (38, "succeeded".to_owned(), 100, "{\"a\":\"1\"}".to_owned())
    );
    let refunds: i64 = connection
        .query_row(
            "SELECT count(*) FROM refunds WHERE payment_id = 'pay_38'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(refunds, 1);
    // The projector goes on from the seed's balances: a deposit after it adds to the opening.
    let mut data = Vec::new();
    encode_into(&mut data, 41, DEPOSIT, &account("alice", 5, None));
    projector.project(&data, 0, 100, ALL).unwrap();
    let balance: i64 = connection
        .query_row(
            "SELECT balance_after FROM account_entries WHERE lsn = 41",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(balance, 705);
    drop(projector);
    let reopened = Projector::open(&path).unwrap();
    assert_eq!(reopened.lsn(), 41);
}

#[test]
fn a_seed_is_one_transaction_and_refused_on_a_database_with_rows() {
    let path = database();
    let mut projector = Projector::open(&path).unwrap();
    // The second account's row breaks the accounts key: nothing of the seed stays.
    let mut broken = seeded();
    broken.accounts.push(broken.accounts[0].clone());
    assert!(projector.seed(&broken).is_err());
    assert_eq!(projector.lsn(), 0);
    let connection = Connection::open(&path).unwrap();
    let count = |table: &str| -> i64 {
        connection
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |row| row.get(0))
            .unwrap()
    };
    for table in ["accounts", "account_entries", "payments", "refunds"] {
        assert_eq!(count(table), 0, "{table}");
    }
    let lsn: i64 = connection
        .query_row("SELECT lsn FROM projection", [], |row| row.get(0))
        .unwrap();
    assert_eq!(lsn, 0);
    // A database that holds rows is refused, even at LSN 0 ... and so is one projected.
    connection
        .execute("INSERT INTO accounts VALUES ('bob', 'EUR', 0, 1)", [])
        .unwrap();
    let refused = projector.seed(&seeded()).unwrap_err();
    assert!(matches!(refused, CoreError::InvalidState(_)), "{refused:?}");
    assert_eq!(count("payments"), 0);
    let path = database();
    let mut projector = Projector::open(&path).unwrap();
    let mut data = Vec::new();
    encode_into(&mut data, 1, OPEN_ACCOUNT, &account("alice", 0, None));
    projector.project(&data, 0, 100, ALL).unwrap();
    assert!(matches!(
        projector.seed(&seeded()),
        Err(CoreError::InvalidState(_))
    ));
    assert_eq!(projector.lsn(), 1);
}
