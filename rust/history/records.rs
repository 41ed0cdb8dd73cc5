//! The records the projector reads besides payments and refunds (`state::records`): accounts'
//! (`OPEN_ACCOUNT`, `DEPOSIT`, `WITHDRAW`) and webhook deliveries, the `MessagePack` arrays msgspec
//! writes for `AccountRecord` and `Deliveries` of `python/instapay/engine/records.py`, field
//! for field. Only what the history keeps is decoded: a deposit's idempotency key is skipped.

use serde::de::IgnoredAny;
use serde::Deserialize;

pub const OPERATION_OPEN_ACCOUNT: u16 = 1;
pub const OPERATION_DEPOSIT: u16 = 2;
pub const OPERATION_WITHDRAW: u16 = 3;
pub const OPERATION_DELIVERIES: u16 = 9;

/// `AccountRecord`: `OPEN_ACCOUNT` (amount 0), `DEPOSIT` and `WITHDRAW`, with their failure.
#[derive(Debug, Deserialize)]
pub struct AccountRecord<'a> {
    pub account_id: &'a str,
    pub currency: &'a str,
    pub amount: i64,
    pub _overdraft: bool,
    /// `Keyed` or nil: the key and its fingerprint stay out of the history.
    #[serde(default)]
    pub _idempotency: Option<IgnoredAny>,
    #[serde(borrow, default)]
    pub failure_code: Option<&'a str>,
}

/// `DeliveryOutcome` of `python/instapay/outbox.py` (a named tuple: an array).
#[derive(Debug, Deserialize)]
pub struct DeliveryOutcome<'a> {
    pub event_lsn: i64,
    pub at_ms: i64,
    pub outcome: &'a str,
    pub delivered: bool,
    pub next_at_ms: Option<i64>,
    /// Absent in outcomes logged before redeliveries had rounds.
    #[serde(default)]
    pub round: i64,
}

/// `Deliveries`: the finished attempts one record logged.
#[derive(Debug, Deserialize)]
pub struct Deliveries<'a> {
    #[serde(borrow)]
    pub outcomes: Vec<DeliveryOutcome<'a>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::records::{decode, unhex};

    // What msgspec writes (records.py `encode`), captured from Python:
    // AccountRecord("alice", "EUR", 500, False, Keyed("k", "ab" * 32, 1700000000), None) and
    // Deliveries([DeliveryOutcome(7, 1700000000123, "200", True, None, 2)]).
    const DEPOSIT_KEYED: &str = "96a5616c696365a3455552cd01f4c293a16bd94061626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162ce6553f100c0";
    const DELIVERIES: &str = "91919607cf0000018bcfe5687ba3323030c3c002";

    #[test]
    fn account_records_written_by_msgspec_decode() {
        let payload = unhex(DEPOSIT_KEYED);
        let record: AccountRecord = decode("deposit", &payload).unwrap();
        assert_eq!(
            (record.account_id, record.currency, record.amount),
            ("alice", "EUR", 500)
        );
        assert_eq!(record.failure_code, None);
    }

    #[test]
    fn deliveries_written_by_msgspec_decode() {
        let payload = unhex(DELIVERIES);
        let record: Deliveries = decode("deliveries", &payload).unwrap();
        let [outcome] = &record.outcomes[..] else {
            panic!("one outcome")
        };
        assert_eq!(
            (outcome.event_lsn, outcome.at_ms, outcome.outcome),
            (7, 1_700_000_000_123, "200")
        );
        assert_eq!(
            (outcome.delivered, outcome.next_at_ms, outcome.round),
            (true, None, 2)
        );
    }
}
