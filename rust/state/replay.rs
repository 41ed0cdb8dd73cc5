//! Recovery's hot path: a run of logged payments and refunds replayed natively, straight from the
//! bytes of a scanned WAL segment, with no Python object per record. Each record is decoded
//! (`records`, strings borrowed), applied to the ledger by the rules `handlers._apply_payment`
//! and `_apply_refund` apply, checked against its logged outcome, and its result added to the
//! result store; the idempotency keys and events it leaves are gathered for the caller to
//! restore in one go at the end of the run.
//!
//! A run stops at a record this module does not replay: any other operation, a version-0 (JSON)
//! record, and any payment or refund whose replay would end in an error (a payload that does not
//! decode, a ledger change refused, a key the index would refuse). Those the Python path applies
//! (`recovery.replay_records`), which names the problem in today's words; the state is unchanged
//! by the refused record, since the ledger refuses before it changes anything.

use super::ledger::PaymentRequest;
use super::records::{
    self, logged_type, PaymentRecord, RefundRecord, OPERATION_PAYMENT, OPERATION_PAYMENT_WITH_CONSENT,
    OPERATION_REFUND,
};
use super::results::{Code, Durable, PaymentFields, RefundFields, Results};
use super::{lsn_in_id, Decline, Ledger, Outcome, PAYMENT_ID_PREFIX};
use crate::body::ID_LEN_MAX;
use crate::digest::decode_hex_mac;
use crate::error::{CoreError, CoreResult};
use crate::idempotency::{Fingerprint, LoggedKey, KEY_LEN_MAX};
use crate::wal::{frame_at, Frame};
use serde::Deserialize;

const PAYMENT: u16 = logged_type(OPERATION_PAYMENT);
const PAYMENT_WITH_CONSENT: u16 = logged_type(OPERATION_PAYMENT_WITH_CONSENT);
const REFUND: u16 = logged_type(OPERATION_REFUND);
const MS_PER_S: i64 = 1000;

/// A replayed result's event: whose it is, and when its webhook is due (if its merchant has
/// one: `State.remember`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    pub lsn: u64,
    pub merchant_id: &'a str,
    pub at_ms: i64,
}

/// Why a run stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// Every record up to the end was replayed.
    End,
    /// The records in these frames are the Python path's to apply (none was applied): the one
    /// the run stopped at, and the records of other operations right after it (one call of the
    /// Python path for a run of them, as for the set-up of accounts and mandates).
    Foreign(Vec<Frame>),
    /// The record does not replay to its logged outcome: what differs, in
    /// `handlers._mismatch`'s words.
    Mismatch(String),
}

/// What a run replayed: the keys and events of its records in log order, where it stopped (the
/// offset after the last record it replayed) and why, and the LSN the next record must have.
#[derive(Debug)]
pub struct Run<'a> {
    pub keys: Vec<LoggedKey<'a>>,
    pub events: Vec<Event<'a>>,
    pub at: usize,
    pub lsn_next: u64,
    pub stop: Stop,
}

/// Where a run reads: the records of `data[at..end]` (a scan's valid frames), those with an LSN
/// above `lsn_after` replayed (a snapshot holds the others).
#[derive(Debug, Clone, Copy)]
pub struct Span<'a> {
    pub data: &'a [u8],
    pub at: usize,
    pub end: usize,
    pub lsn_after: u64,
}

/// What replaying one record came to.
enum Replayed<'a> {
    Applied(Option<LoggedKey<'a>>, Event<'a>),
    Foreign,
    Mismatch(String),
}

/// Replays the payments and refunds of `span` from its start, the first one expected at
/// `lsn_next`, until its end or a record the Python path must apply.
///
/// # Errors
/// `LsnOutOfOrder` for a record not numbered `lsn_next`; `InvalidState` for a span that is not
/// of scanned frames, or a result the store refuses.
pub fn replay_run<'a>(
    ledger: &mut Ledger,
    results: &mut Results,
    span: Span<'a>,
    lsn_next: u64,
) -> CoreResult<Run<'a>> {
    if span.at > span.end || span.end > span.data.len() {
        return Err(CoreError::InvalidState(format!(
            "no records at {}..{} of {} bytes",
            span.at,
            span.end,
            span.data.len()
        )));
    }
    let data = &span.data[..span.end];
    let mut run = Run {
        keys: Vec::new(),
        events: Vec::new(),
        at: span.at,
        lsn_next,
        stop: Stop::End,
    };
    let mut json = Vec::new();
    while run.at < data.len() {
        let frame = frame_at(data, run.at)
            .map_err(|_| CoreError::InvalidState(format!("no valid record at byte offset {}", run.at)))?;
        let next = frame.payload_at + frame.payload_len;
        if frame.lsn <= span.lsn_after {
            run.at = next;
            continue;
        }
        if frame.lsn != run.lsn_next {
            return Err(CoreError::LsnOutOfOrder {
                expected: run.lsn_next,
                got: frame.lsn,
            });
        }
        let payload = &data[frame.payload_at..next];
        let replayed = match frame.record_type {
            PAYMENT | PAYMENT_WITH_CONSENT => {
                let consent = frame.record_type == PAYMENT_WITH_CONSENT;
                replay_payment(ledger, results, consent, frame.lsn, payload, &mut json)?
            }
            REFUND => replay_refund(ledger, results, frame.lsn, payload)?,
            _ => Replayed::Foreign,
        };
        match replayed {
            Replayed::Applied(key, event) => {
                run.keys.extend(key);
                run.events.push(event);
                run.at = next;
                run.lsn_next += 1;
            }
            Replayed::Foreign => {
                run.stop = Stop::Foreign(foreign_run(data, frame));
                return Ok(run);
            }
            Replayed::Mismatch(detail) => {
                run.stop = Stop::Mismatch(detail);
                return Ok(run);
            }
        }
    }
    Ok(run)
}

/// The frame `first` and the frames right after it that are not of payments or refunds.
fn foreign_run(data: &[u8], first: Frame) -> Vec<Frame> {
    let mut frames = vec![first];
    let mut at = first.payload_at + first.payload_len;
    while let Ok(frame) = frame_at(data, at) {
        if matches!(frame.record_type, PAYMENT | PAYMENT_WITH_CONSENT | REFUND) {
            break;
        }
        at = frame.payload_at + frame.payload_len;
        frames.push(frame);
    }
    frames
}

/// The record's key as the index restores it (`records._key`, `recovery._restore_keys`), or
/// `Err(())` when the index would refuse it: the Python path then names the problem.
fn logged_key<'a>(
    key: Option<&'a str>,
    fingerprint: &str,
    created_s: i64,
    tenant: &'a str,
    lsn: u64,
) -> Result<Option<LoggedKey<'a>>, ()> {
    let Some(key) = key else {
        return Ok(None);
    };
    let digest = decode_hex_mac(fingerprint).map_err(|_| ())?;
    let created_s = u32::try_from(created_s).map_err(|_| ())?;
    if key.is_empty() || key.len() > KEY_LEN_MAX || tenant.is_empty() || tenant.len() > ID_LEN_MAX {
        return Err(());
    }
    // The index keeps the first half of the digest (`idempotency::Fingerprint`).
    let fingerprint: Fingerprint = digest[..size_of::<Fingerprint>()]
        .try_into()
        .expect("sliced to length");
    Ok(Some(LoggedKey {
        key: key.as_bytes(),
        fingerprint,
        created_s,
        tenant: tenant.as_bytes(),
        lsn,
    }))
}

/// What payment and refund records share: whose they are, when they were made, the key they
/// reserved.
trait Logged<'a> {
    /// (merchant id, created, idempotency key, fingerprint)
    fn logged(&self) -> (&'a str, i64, Option<&'a str>, &'a str);
}

impl<'a> Logged<'a> for PaymentRecord<'a> {
    fn logged(&self) -> (&'a str, i64, Option<&'a str>, &'a str) {
        (
            self.merchant_id,
            self.created_s,
            self.idempotency_key,
            self.fingerprint,
        )
    }
}

impl<'a> Logged<'a> for RefundRecord<'a> {
    fn logged(&self) -> (&'a str, i64, Option<&'a str>, &'a str) {
        (
            self.merchant_id,
            self.created_s,
            self.idempotency_key,
            self.fingerprint,
        )
    }
}

/// The record in `payload`, the key it reserved (if any) and the event of its result (its
/// webhook due when it was made); None when the Python path must apply it: a payload that does
/// not decode, a key the index would refuse, a time beyond counting in milliseconds.
fn read<'a, T: Logged<'a> + Deserialize<'a>>(
    what: &'static str,
    payload: &'a [u8],
    lsn: u64,
) -> Option<(T, Option<LoggedKey<'a>>, Event<'a>)> {
    let record: T = records::decode(what, payload).ok()?;
    let (merchant_id, created_s, key, fingerprint) = record.logged();
    let key = logged_key(key, fingerprint, created_s, merchant_id, lsn).ok()?;
    let at_ms = created_s.checked_mul(MS_PER_S)?;
    let event = Event {
        lsn,
        merchant_id,
        at_ms,
    };
    Some((record, key, event))
}

fn failure_of(outcome: Outcome) -> Option<&'static str> {
    outcome.err().map(Decline::code)
}

/// `handlers._mismatch` for a failure that is not the logged one.
fn failure_mismatch(lsn: u64, gave: Option<&str>, said: Option<&str>) -> String {
    format!(
        "replay of LSN {lsn} gave {}, the log says {}",
        gave.unwrap_or("success"),
        said.unwrap_or("it succeeded")
    )
}

/// `handlers._apply_payment` and its `settle` check, then `State.remember`'s result.
fn replay_payment<'a>(
    ledger: &mut Ledger,
    results: &mut Results,
    consent: bool,
    lsn: u64,
    payload: &'a [u8],
    json: &mut Vec<u8>,
) -> CoreResult<Replayed<'a>> {
    let Some((record, key, event)) = read::<PaymentRecord>("payment", payload, lsn) else {
        return Ok(Replayed::Foreign);
    };
    let merchant_id = record.merchant_id;
    let request = PaymentRequest::new(
        lsn,
        record.payer,
        record.settlement_account,
        record.amount,
        record.currency,
    );
    let outcome = if consent {
        ledger.pay(&request, merchant_id, record.created_s)
    } else {
        ledger.pay_as_before_consent(&request)
    };
    let Ok(outcome) = outcome else {
        return Ok(Replayed::Foreign);
    };
    let failure = failure_of(outcome);
    if failure != record.failure_code {
        return Ok(Replayed::Mismatch(failure_mismatch(
            lsn,
            failure,
            record.failure_code,
        )));
    }
    if let Some(metadata) = &record.metadata {
        metadata.write_json(json);
    }
    let payment = PaymentFields {
        merchant_id,
        order_id: record.order_id,
        payer: record.payer,
        amount: record.amount,
        currency: record.currency,
        code: Code::new(failure.is_none(), failure)?,
        created_s: record.created_s,
        description: record.description,
        metadata: record.metadata.as_ref().map(|_| json.as_slice()),
    };
    results.add(lsn, &Durable::Payment(payment))?;
    Ok(Replayed::Applied(key, event))
}

/// Whether the payment at `lsn` may be one memory forgot (`state/evict.rs`): not held, and
/// older than every result held.
fn forgotten(ledger: &Ledger, results: &Results, lsn: u64) -> bool {
    ledger.payment(lsn).is_none() && results.first_lsn().is_some_and(|first| lsn < first)
}

/// `handlers._apply_refund` and its `settle` check, then `State.remember`'s result.
fn replay_refund<'a>(
    ledger: &mut Ledger,
    results: &mut Results,
    lsn: u64,
    payload: &'a [u8],
) -> CoreResult<Replayed<'a>> {
    let Some((record, key, event)) = read::<RefundRecord>("refund", payload, lsn) else {
        return Ok(Replayed::Foreign);
    };
    let merchant_id = record.merchant_id;
    let paid = lsn_in_id(record.payment_id, PAYMENT_ID_PREFIX);
    if paid.is_some_and(|paid| forgotten(ledger, results, paid)) {
        // Older than the hot window: the Python path recalls it from history.db first.
        return Ok(Replayed::Foreign);
    }
    let Ok((amount, outcome)) = ledger.refund(paid, record.amount_requested) else {
        return Ok(Replayed::Foreign);
    };
    let failure = failure_of(outcome);
    if amount != record.amount {
        let said = record.amount;
        return Ok(Replayed::Mismatch(format!(
            "replay of LSN {lsn} refunded {amount}, the log says {said}"
        )));
    }
    if failure != record.failure_code {
        return Ok(Replayed::Mismatch(failure_mismatch(
            lsn,
            failure,
            record.failure_code,
        )));
    }
    let entry = paid.and_then(|paid| ledger.payment(paid));
    let currency = entry.map_or("", |entry| ledger.accounts().currency_of(entry.payer));
    let refund = RefundFields {
        payment_id: record.payment_id,
        merchant_id,
        amount,
        currency,
        code: Code::new(failure.is_none(), failure)?,
        created_s: record.created_s,
        reason: record.reason,
    };
    results.add(lsn, &Durable::Refund(refund))?;
    Ok(Replayed::Applied(key, event))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ledger::tests::{shop_ledger, NOW_S};
    use crate::state::records::Metadata;
    use crate::wal::{encode_into, HEADER_LEN};

    const FINGERPRINT: &str = "abababababababababababababababababababababababababababababababab";
    const DEPOSIT: u16 = 258;

    fn payment(order_id: &str, amount: i64, failure_code: Option<&'static str>) -> Vec<u8> {
        records::encode(&PaymentRecord {
            merchant_id: "shop",
            order_id,
            payer: "alice",
            settlement_account: "shop",
            amount,
            currency: "EUR",
            description: Some("desc"),
            metadata: Some(Metadata(vec![("b", "1"), ("a", "\"\n"), ("b", "2")])),
            created_s: NOW_S,
            idempotency_key: Some("shop\0o:1"),
            fingerprint: FINGERPRINT,
            failure_code,
        })
    }

    fn refund(
        payment_id: &str,
        amount_requested: Option<i64>,
        amount: i64,
        failure_code: Option<&'static str>,
    ) -> Vec<u8> {
        records::encode(&RefundRecord {
            payment_id,
            merchant_id: "shop",
            amount_requested,
            reason: None,
            created_s: NOW_S + 1,
            idempotency_key: None,
            fingerprint: FINGERPRINT,
            amount,
            failure_code,
        })
    }

    /// Frames the records as a segment's records, numbered from 2 (the shop ledger's mandate is 1).
    fn frames(records: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut data = Vec::new();
        for (lsn, (record_type, payload)) in (2..).zip(records) {
            encode_into(&mut data, lsn, *record_type, payload);
        }
        data
    }

    fn replay<'a>(ledger: &mut Ledger, results: &mut Results, data: &'a [u8], at: usize) -> Run<'a> {
        let span = Span {
            data,
            at,
            end: data.len(),
            lsn_after: 1,
        };
        replay_run(ledger, results, span, 2).unwrap()
    }

    #[test]
    fn payments_and_refunds_replay_to_their_logged_outcomes() {
        let data = frames(&[
            (PAYMENT_WITH_CONSENT, payment("o-1", 300, None)),
            (
                PAYMENT_WITH_CONSENT,
                payment("o-2", 501, Some("mandate_amount_exceeded")),
            ),
            (REFUND, refund("pay_2", Some(100), 100, None)),
            (REFUND, refund("pay_2", None, 200, None)),
            (REFUND, refund("pay_2", None, 0, Some("refund_exceeds_payment"))),
            (PAYMENT, payment("o-3", 2000, Some("insufficient_funds"))),
        ]);
        let (mut ledger, mut results) = (shop_ledger(), Results::default());
        let run = replay(&mut ledger, &mut results, &data, 0);
        assert_eq!((run.stop, run.at, run.lsn_next), (Stop::End, data.len(), 8));
        assert_eq!(
            ledger.accounts().get(0).balance,
            1000,
            "paid 300, refunded all of it"
        );
        assert_eq!(results.len(), 6);
        let Some(Durable::Payment(paid)) = results.get(2) else {
            panic!("no payment at 2");
        };
        assert_eq!((paid.order_id, paid.description), ("o-1", Some("desc")));
        // msgspec keeps the last value of a repeated key, where the key first came.
        assert_eq!(paid.metadata, Some(&br#"{"b":"2","a":"\"\n"}"#[..]));
        let Some(Durable::Refund(declined)) = results.get(6) else {
            panic!("no refund at 6");
        };
        assert_eq!(
            (declined.currency, declined.code.failure()),
            ("EUR", Some("refund_exceeds_payment"))
        );
        let keyed: Vec<u64> = run.keys.iter().map(|key| key.lsn).collect();
        assert_eq!(keyed, [2, 3, 7], "the refunds are unkeyed");
        assert_eq!(run.keys[0].tenant, b"shop");
        assert_eq!(run.keys[0].fingerprint, [0xab; 16]);
        assert_eq!(run.events.len(), 6);
        assert_eq!(run.events[2].at_ms, (NOW_S + 1) * 1000);
    }

    #[test]
    fn other_records_stop_the_run_unapplied_and_the_next_run_goes_on_after_them() {
        let data = frames(&[
            (PAYMENT_WITH_CONSENT, payment("o-1", 300, None)),
            (DEPOSIT, b"\x94".to_vec()),
            (DEPOSIT, b"\x94".to_vec()),
            (PAYMENT_WITH_CONSENT, payment("o-2", 300, None)),
        ]);
        let (mut ledger, mut results) = (shop_ledger(), Results::default());
        let run = replay(&mut ledger, &mut results, &data, 0);
        let Stop::Foreign(frames) = run.stop else {
            panic!("the deposits are Python's: {:?}", run.stop);
        };
        let lsns: Vec<(u64, u16)> = frames
            .iter()
            .map(|frame| (frame.lsn, frame.record_type))
            .collect();
        assert_eq!(lsns, [(3, DEPOSIT), (4, DEPOSIT)]);
        assert_eq!(
            (run.lsn_next, run.at, results.len()),
            (3, frames[0].payload_at - HEADER_LEN, 1)
        );
        let span = Span {
            data: &data,
            at: frames[1].payload_at + frames[1].payload_len,
            end: data.len(),
            lsn_after: 1,
        };
        let rest = replay_run(&mut ledger, &mut results, span, 5).unwrap();
        assert_eq!((rest.stop, rest.lsn_next, results.len()), (Stop::End, 6, 2));
    }

    #[test]
    fn what_would_end_in_an_error_is_left_to_python_with_nothing_changed() {
        let too_late = records::encode(&PaymentRecord {
            created_s: i64::MAX,
            ..records::decode::<PaymentRecord>("payment", &payment("o", 1, None)).unwrap()
        });
        for record in [
            (PAYMENT_WITH_CONSENT, b"\x93\x01\x02\x03".to_vec()),
            (PAYMENT_WITH_CONSENT, payment("o", -1, None)),
            (REFUND, refund("pay_2", Some(-1), 0, None)),
            (PAYMENT_WITH_CONSENT, too_late),
            (logged_type(OPERATION_PAYMENT) & 0xff, payment("o", 1, None)),
        ] {
            let data = frames(&[record]);
            let (mut ledger, mut results) = (shop_ledger(), Results::default());
            let run = replay(&mut ledger, &mut results, &data, 0);
            assert!(matches!(run.stop, Stop::Foreign(_)), "{:?}", run.stop);
            assert_eq!((ledger, results.len()), (shop_ledger(), 0));
        }
    }

    #[test]
    fn an_outcome_the_replay_does_not_reach_is_a_mismatch() {
        let cases = [
            (
                (PAYMENT_WITH_CONSENT, payment("o", 501, None)),
                "replay of LSN 2 gave mandate_amount_exceeded, the log says it succeeded",
            ),
            (
                (PAYMENT_WITH_CONSENT, payment("o", 1, Some("insufficient_funds"))),
                "replay of LSN 2 gave success, the log says insufficient_funds",
            ),
            (
                (
                    REFUND,
                    refund("pay_9", Some(5), 4, Some("payment_not_refundable")),
                ),
                "replay of LSN 2 refunded 5, the log says 4",
            ),
        ];
        for (record, detail) in cases {
            let data = frames(&[record]);
            let (mut ledger, mut results) = (shop_ledger(), Results::default());
            let run = replay(&mut ledger, &mut results, &data, 0);
            assert_eq!(run.stop, Stop::Mismatch(detail.to_owned()));
            assert_eq!(results.len(), 0);
        }
    }

    #[test]
    fn records_a_snapshot_holds_are_skipped_and_a_gap_is_refused() {
        let data = frames(&[
            (PAYMENT_WITH_CONSENT, payment("o-1", 1, None)),
            (PAYMENT_WITH_CONSENT, payment("o-2", 1, None)),
        ]);
        let (mut ledger, mut results) = (shop_ledger(), Results::default());
        let span = Span {
            data: &data,
            at: 0,
            end: data.len(),
            lsn_after: 2,
        };
        let run = replay_run(&mut ledger, &mut results, span, 3).unwrap();
        assert_eq!((run.lsn_next, results.lsns().collect::<Vec<_>>()), (4, vec![3]));
        let error = replay_run(&mut shop_ledger(), &mut Results::default(), span, 5).unwrap_err();
        assert_eq!(error.to_string(), "replay expected LSN 5, got 3");
        let beyond = Span {
            end: data.len() + 1,
            ..span
        };
        assert!(replay_run(&mut ledger, &mut results, beyond, 3).is_err());
    }
}
