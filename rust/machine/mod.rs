//! The hot path in one call per batch: a run of signed payment and refund requests is verified
//! (by the caller, `machine_py`, with the key ring), routed, parsed, reserved in the idempotency
//! index, applied to the ledger and encoded as WAL frames here; once the frames are durable,
//! `Staged::commit` adds the results to the durable store and completes their keys. Plain Rust,
//! no pyo3: the binding converts, this decides.
//!
//! The rules and messages are the ones `python/instapay/engine/handlers.py` and the former
//! Python intake applied, in the same order: client key, signature, route, body, merchant, the
//! refund's key and payment, then the idempotency index, then the ledger. Every request of the
//! run is parsed and reserved before the first is applied, as the Python pipeline did.
//!
//! Lock order (the binding takes them): the ledger, then the results, then the index.

pub mod merchants;
pub mod route;

use std::collections::HashMap;

use crate::body::{parse_payment, parse_refund, PaymentBody, RefundBody};
use crate::digest::{encode_hex, Digest};
use crate::error::{CoreError, CoreResult};
use crate::idempotency::{Fingerprint, Index, KeyHasher, Outcome, Shares};
use crate::signature::{Problem, PROBLEM_UNKNOWN_KID};
use crate::state::ledger::PaymentRequest;
use crate::state::records::{
    self, logged_type, PaymentRecord, RefundRecord, OPERATION_PAYMENT_WITH_CONSENT, OPERATION_REFUND,
};
use crate::state::results::{Code, Durable, PaymentFields, RefundFields, Results};
use crate::state::{Decline, Ledger};
use crate::wal;
use merchants::{Merchant, Merchants};
use route::{client_key_problem, python_repr, route, Refusal, Route};

/// One signed request of a run, as received.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The merchant whose signature the caller checked (the batch endpoint: one signature over
    /// many payments); None for a request this stage verifies.
    pub merchant: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    pub idempotency_key: Option<&'a str>,
    pub body: &'a [u8],
}

/// The signature check of one request: the authenticated kid, or why it is refused; None for a
/// request whose merchant the caller authenticated.
pub type Verdict = Option<Result<String, Problem>>;

/// What became of one request of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Applied at this LSN; its result is answered once durable.
    Applied(u64),
    Refused(Refusal),
    /// The signature problem (`signing._problem_error` names it).
    Signature(Problem),
    /// The index knew the key already: `(status, value)` of `Outcome::code`.
    Known(u8, u64),
}

/// What a result keeps until it is durable, beyond its merchant and LSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kept {
    Payment {
        order_id: String,
        payer: String,
        amount: i64,
        currency: String,
        description: Option<String>,
        /// In the order the request gave them.
        metadata: Option<Vec<(String, String)>>,
    },
    Refund {
        payment_id: String,
        amount: i64,
        currency: String,
        reason: Option<String>,
    },
}

/// A result applied in memory: what the store keeps once it is durable, and the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedResult {
    pub lsn: u64,
    slot: u64,
    pub merchant_id: String,
    pub failure: Option<&'static str>,
    pub kept: Kept,
}

/// A run applied in memory: its WAL frames, what each request got, and the results to keep
/// once the frames are durable.
#[derive(Debug)]
pub struct Staged {
    pub lsn_first: u64,
    pub lsn_next: u64,
    pub created_s: i64,
    pub frames: Vec<u8>,
    pub answers: Vec<Answer>,
    applied: Vec<AppliedResult>,
    committed: bool,
}

/// The state a run reads and changes, locked by the caller in the documented order.
pub struct Parts<'s> {
    pub ledger: &'s mut Ledger,
    pub results: &'s Results,
    pub index: &'s mut Index,
    pub key_hasher: KeyHasher,
    pub merchants: &'s Merchants,
}

enum Op<'a> {
    Payment(PaymentBody),
    Refund(&'a str, u64, RefundBody),
}

/// A request that passed every check before the index.
struct Parsed<'a> {
    merchant: &'a Merchant,
    key: String,
    fingerprint: Digest,
    op: Op<'a>,
}

/// Stages a run whose records get the LSNs from `lsn_first` on.
///
/// # Errors
/// Only a bug: an LSN out of order, an index or store refusing what it was checked for. The
/// caller must then stop: memory may hold part of the run.
///
/// # Panics
/// If `verdicts` is not one per request.
pub fn stage<'a>(
    parts: &mut Parts<'a>,
    requests: &[Request<'a>],
    verdicts: &[Verdict],
    lsn_first: u64,
    now_s: i64,
) -> CoreResult<Staged> {
    assert_eq!(requests.len(), verdicts.len(), "one verdict per request");
    let merchants = parts.merchants;
    let mut answers = vec![Answer::Known(0, 0); requests.len()];
    let mut parsed = Vec::with_capacity(requests.len());
    for (at, (request, verdict)) in requests.iter().zip(verdicts).enumerate() {
        let admitted = admit(merchants, request, verdict.as_ref());
        match admitted.and_then(|(merchant, route)| parse(parts, request, merchant, route)) {
            Ok(op) => parsed.push((at, op)),
            Err(answer) => answers[at] = answer,
        }
    }
    let outcomes = reserve(parts, &parsed, now_s)?;
    let mut staged = Staged {
        lsn_first,
        lsn_next: lsn_first,
        created_s: now_s,
        frames: Vec::with_capacity(parsed.len() * 256),
        answers: Vec::new(),
        applied: Vec::with_capacity(parsed.len()),
        committed: false,
    };
    for ((at, item), outcome) in parsed.iter().zip(outcomes) {
        answers[*at] = match outcome {
            Outcome::New(slot) => Answer::Applied(staged.apply(parts.ledger, item, slot)?),
            known => {
                let (status, value) = known.code();
                Answer::Known(status, value)
            }
        };
    }
    staged.answers = answers;
    Ok(staged)
}

/// The merchant and route of a request, or the answer refusing it.
fn admit<'a>(
    merchants: &'a Merchants,
    request: &Request<'a>,
    verdict: Option<&Result<String, Problem>>,
) -> Result<(&'a Merchant, Route<'a>), Answer> {
    if let Some(merchant_id) = request.merchant {
        let merchant = merchants.by_id(merchant_id).ok_or_else(|| {
            let message = format!("no merchant {merchant_id}");
            Answer::Refused(Refusal::new("merchant_not_found", message, 400))
        })?;
        return Ok((merchant, Route::Payment));
    }
    if let Some(problem) = request.idempotency_key.and_then(client_key_problem) {
        return Err(Answer::Refused(Refusal::invalid(problem.to_owned())));
    }
    let kid = match verdict {
        Some(Ok(kid)) => kid,
        Some(Err(problem)) => return Err(Answer::Signature(problem.clone())),
        None => unreachable!("a request this stage verifies has a verdict"),
    };
    // The ring and the table change together (`Merchants._put`): a kid the ring knows names a
    // merchant; if not, the kid is as unknown as it would be to the ring.
    let merchant = merchants.by_kid(kid).ok_or_else(|| {
        Answer::Signature(Problem {
            code: PROBLEM_UNKNOWN_KID,
            detail: kid.clone(),
        })
    })?;
    let route = route(request.method, request.path).map_err(Answer::Refused)?;
    Ok((merchant, route))
}

/// The body parsed, its merchant and key checked, its scoped idempotency key: exactly as
/// `intake.py` built it (`<merchant>\0k:<client key>` or `\0o:<order>`; a refund's
/// `\0r:<payment id>:<client key>`).
fn parse<'a>(
    parts: &Parts<'_>,
    request: &Request<'a>,
    merchant: &'a Merchant,
    route: Route<'a>,
) -> Result<Parsed<'a>, Answer> {
    let invalid = |message| Answer::Refused(Refusal::invalid(message));
    match route {
        Route::Payment => {
            let (body, fingerprint) = parse_payment(request.body).map_err(invalid)?;
            if body.merchant_id != merchant.id {
                let message = format!(
                    "merchant_id {} is not the merchant of the signing key",
                    python_repr(&body.merchant_id)
                );
                return Err(Answer::Refused(Refusal::new("merchant_mismatch", message, 403)));
            }
            let scope = match request.idempotency_key {
                Some(client_key) => format!("k:{client_key}"),
                None => format!("o:{}", body.order_id),
            };
            let key = format!("{}\0{scope}", merchant.id);
            Ok(Parsed {
                merchant,
                key,
                fingerprint,
                op: Op::Payment(body),
            })
        }
        Route::Refund(paid, lsn) => {
            let (body, fingerprint) = parse_refund(request.body).map_err(invalid)?;
            let Some(client_key) = request.idempotency_key else {
                // A refund has no natural scope (a payment may be refunded in parts): its signed
                // key is the scope, without which every resend of a captured refund refunds again.
                let message = "a refund needs an Idempotency-Key, covered by a v2 signature";
                let refusal = Refusal::new("idempotency_key_required", message.to_owned(), 400);
                return Err(Answer::Refused(refusal));
            };
            if !refundable(parts, lsn, merchant) {
                let message = format!("no refundable payment {paid}");
                return Err(Answer::Refused(Refusal::new("not_found", message, 404)));
            }
            let key = format!("{}\0r:{paid}:{client_key}", merchant.id);
            Ok(Parsed {
                merchant,
                key,
                fingerprint,
                op: Op::Refund(paid, lsn, body),
            })
        }
    }
}

/// A durable payment of this merchant, into its settlement account. The account alone does
/// not say whose a payment is: a merchant added to the configuration file may settle into an
/// account an admin-created merchant uses. Payments not yet durable have no result: refused.
fn refundable(parts: &Parts<'_>, lsn: u64, merchant: &Merchant) -> bool {
    let ledger = &*parts.ledger;
    let Some(payment) = ledger.payment(lsn) else {
        return false;
    };
    let settlement = ledger.accounts().id_of(payment.settlement);
    parts.results.merchant_of(lsn) == Some(merchant.id.as_str()) && settlement == merchant.settlement_account
}

/// Every key of the run reserved at once, each in its merchant's share.
fn reserve(parts: &mut Parts<'_>, parsed: &[(usize, Parsed<'_>)], now_s: i64) -> CoreResult<Vec<Outcome>> {
    let now_s =
        u32::try_from(now_s).map_err(|_| CoreError::InvalidState(format!("now_s {now_s} out of range")))?;
    let mut hashes = Vec::with_capacity(parsed.len());
    let mut fingerprints: Vec<Fingerprint> = Vec::with_capacity(parsed.len());
    let mut tenants = Vec::with_capacity(parsed.len());
    let mut last: Option<(&str, _)> = None;
    for (at, (_, item)) in parsed.iter().enumerate() {
        hashes.push(parts.key_hasher.hash(item.key.as_bytes()));
        fingerprints.push(item.fingerprint[..16].try_into().expect("a 32-byte digest"));
        // A run is mostly one merchant's: its tenant is looked up once.
        let tenant = match last {
            Some((id, tenant)) if id == item.merchant.id => tenant,
            _ => parts
                .index
                .tenants_mut()
                .intern(at, item.merchant.id.as_bytes())?,
        };
        last = Some((item.merchant.id.as_str(), tenant));
        tenants.push(tenant);
    }
    Ok(parts
        .index
        .reserve_batch(&hashes, &fingerprints, &tenants, now_s, Shares::Enforced))
}

fn failure_of(outcome: Result<(), Decline>) -> Option<&'static str> {
    outcome.err().map(Decline::code)
}

impl Staged {
    /// Applies one reserved request at the next LSN and frames its record, outcome included.
    fn apply(&mut self, ledger: &mut Ledger, item: &Parsed<'_>, slot: u64) -> CoreResult<u64> {
        let lsn = self.lsn_next;
        self.lsn_next += 1;
        let fingerprint = encode_hex(&item.fingerprint);
        let key = Some(item.key.as_str());
        let mut payload = Vec::with_capacity(256);
        let (failure, kept) = match &item.op {
            Op::Payment(body) => {
                let amount = i64::try_from(body.amount).expect("amounts are at most AMOUNT_MAX");
                let settlement = &item.merchant.settlement_account;
                let request = PaymentRequest::new(lsn, &body.payer, settlement, amount, &body.currency);
                let failure = failure_of(ledger.pay(&request, &item.merchant.id, self.created_s)?);
                let metadata = body.metadata.as_ref().map(|metadata| {
                    records::Metadata(metadata.0.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect())
                });
                let record = PaymentRecord {
                    merchant_id: &item.merchant.id,
                    order_id: &body.order_id,
                    payer: &body.payer,
                    settlement_account: settlement,
                    amount,
                    currency: &body.currency,
                    description: body.description.as_deref(),
                    metadata,
                    created_s: self.created_s,
                    idempotency_key: key,
                    fingerprint: &fingerprint,
                    failure_code: failure,
                };
                records::encode_into(&record, &mut payload);
                self.frame(lsn, logged_type(OPERATION_PAYMENT_WITH_CONSENT), &payload)?;
                let kept = Kept::Payment {
                    order_id: body.order_id.clone(),
                    payer: body.payer.clone(),
                    amount,
                    currency: body.currency.clone(),
                    description: body.description.clone(),
                    metadata: body.metadata.as_ref().map(|metadata| metadata.0.clone()),
                };
                (failure, kept)
            }
            Op::Refund(paid, paid_lsn, body) => {
                let requested = body
                    .amount
                    .map(|amount| i64::try_from(amount).expect("at most AMOUNT_MAX"));
                let (amount, outcome) = ledger.refund(Some(*paid_lsn), requested)?;
                let failure = failure_of(outcome);
                let record = RefundRecord {
                    payment_id: paid,
                    merchant_id: &item.merchant.id,
                    amount_requested: requested,
                    reason: body.reason.as_deref(),
                    created_s: self.created_s,
                    idempotency_key: key,
                    fingerprint: &fingerprint,
                    amount,
                    failure_code: failure,
                };
                records::encode_into(&record, &mut payload);
                self.frame(lsn, logged_type(OPERATION_REFUND), &payload)?;
                let currency = ledger
                    .payment(*paid_lsn)
                    .map_or("", |payment| ledger.accounts().currency_of(payment.payer));
                let kept = Kept::Refund {
                    payment_id: (*paid).to_owned(),
                    amount,
                    currency: currency.to_owned(),
                    reason: body.reason.clone(),
                };
                (failure, kept)
            }
        };
        self.applied.push(AppliedResult {
            lsn,
            slot,
            merchant_id: item.merchant.id.clone(),
            failure,
            kept,
        });
        Ok(lsn)
    }

    fn frame(&mut self, lsn: u64, record_type: u16, payload: &[u8]) -> CoreResult<()> {
        wal::check_payload(self.applied.len(), payload)?;
        wal::encode_into(&mut self.frames, lsn, record_type, payload);
        Ok(())
    }

    /// The results applied, in LSN order.
    #[must_use]
    pub fn applied(&self) -> &[AppliedResult] {
        &self.applied
    }

    /// How many records the run logs.
    #[must_use]
    pub fn records(&self) -> u64 {
        self.lsn_next - self.lsn_first
    }

    /// The LSN of the request that reserved `slot` in this run, if one did.
    #[must_use]
    pub fn lsn_of_slot(&self, slot: u64) -> Option<u64> {
        self.applied
            .iter()
            .find(|applied| applied.slot == slot)
            .map(|applied| applied.lsn)
    }

    /// The run is durable: adds its results to the store (in LSN order) and completes their
    /// keys (each key's reference is its result's LSN). Returns each merchant's new LSNs, in
    /// the order of the merchants' first result. Take the results lock before the index's.
    ///
    /// # Errors
    /// A second commit; a store or index refusing (a bug: nothing may be applied twice).
    pub fn commit(
        &mut self,
        results: &mut Results,
        index: &mut Index,
    ) -> CoreResult<Vec<(String, Vec<u64>)>> {
        if self.committed {
            return Err(CoreError::InvalidState(
                "a staged batch is committed once".to_owned(),
            ));
        }
        self.committed = true;
        let mut by_merchant: Vec<(String, Vec<u64>)> = Vec::new();
        let mut position: HashMap<&str, usize> = HashMap::new();
        for applied in &self.applied {
            let metadata = applied.metadata_json();
            results.add(
                applied.lsn,
                &applied.durable(self.created_s, metadata.as_deref())?,
            )?;
            let at = *position.entry(applied.merchant_id.as_str()).or_insert_with(|| {
                by_merchant.push((applied.merchant_id.clone(), Vec::new()));
                by_merchant.len() - 1
            });
            by_merchant[at].1.push(applied.lsn);
        }
        let slots: Vec<u64> = self.applied.iter().map(|applied| applied.slot).collect();
        let lsns: Vec<u64> = self.applied.iter().map(|applied| applied.lsn).collect();
        index.complete_batch(&slots, &lsns)?;
        Ok(by_merchant)
    }
}

impl AppliedResult {
    /// A payment's metadata as JSON, as the results store keeps it (`results.py` wrote it with
    /// orjson: the same object, keys in the request's order).
    fn metadata_json(&self) -> Option<Vec<u8>> {
        let Kept::Payment {
            metadata: Some(pairs),
            ..
        } = &self.kept
        else {
            return None;
        };
        let borrowed = records::Metadata(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect());
        let mut json = Vec::new();
        borrowed.write_json(&mut json);
        Some(json)
    }

    fn durable<'a>(&'a self, created_s: i64, metadata_json: Option<&'a [u8]>) -> CoreResult<Durable<'a>> {
        let code = Code::new(self.failure.is_none(), self.failure)?;
        Ok(match &self.kept {
            Kept::Payment {
                order_id,
                payer,
                amount,
                currency,
                description,
                metadata: _,
            } => Durable::Payment(PaymentFields {
                merchant_id: &self.merchant_id,
                order_id,
                payer,
                amount: *amount,
                currency,
                code,
                created_s,
                description: description.as_deref(),
                metadata: metadata_json,
            }),
            Kept::Refund {
                payment_id,
                amount,
                currency,
                reason,
            } => Durable::Refund(RefundFields {
                payment_id,
                merchant_id: &self.merchant_id,
                amount: *amount,
                currency,
                code,
                created_s,
                reason: reason.as_deref(),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idempotency::{RESERVE_IN_FLIGHT, RESERVE_REPLAY};
    use crate::signature::PROBLEM_MISMATCH;
    use crate::state::accounts::Owner;
    use crate::state::ledger::Grant;
    use route::PAYMENTS_PATH;

    const NOW_S: i64 = 1_800_000_000;

    struct World {
        ledger: Ledger,
        results: Results,
        index: Index,
        merchants: Merchants,
    }

    fn world() -> World {
        let mut ledger = Ledger::default();
        for (id, owner) in [
            ("alice", Owner::Customer),
            ("shop.settlement", Owner::Merchant),
            ("other.settlement", Owner::Merchant),
        ] {
            ledger.open_account(id, "EUR", false, owner).unwrap().unwrap();
        }
        ledger.deposit("alice", 1000, "EUR").unwrap().unwrap();
        let grant = Grant {
            account_id: "alice",
            merchant_id: "shop",
            amount_max_per_payment: 500,
            amount_max_per_day: None,
            expires_at_s: None,
            created_s: NOW_S,
        };
        ledger.grant_mandate(1, &grant).unwrap();
        let mut merchants = Merchants::default();
        merchants.put("shop", "shop.settlement", &["shop.k1".to_owned()]);
        merchants.put("other", "other.settlement", &["other.k1".to_owned()]);
        let index = Index::new(1000, 3600, 50, [7; 16]).unwrap();
        World {
            ledger,
            results: Results::default(),
            index,
            merchants,
        }
    }

    impl World {
        fn stage(&mut self, requests: &[Request<'_>], verdicts: &[Verdict], lsn_first: u64) -> Staged {
            let key_hasher = self.index.key_hasher();
            let mut parts = Parts {
                ledger: &mut self.ledger,
                results: &self.results,
                index: &mut self.index,
                key_hasher,
                merchants: &self.merchants,
            };
            stage(&mut parts, requests, verdicts, lsn_first, NOW_S).unwrap()
        }

        fn commit(&mut self, staged: &mut Staged) -> Vec<(String, Vec<u64>)> {
            staged.commit(&mut self.results, &mut self.index).unwrap()
        }
    }

    fn payment(merchant: &str, order: &str, amount: u64) -> Vec<u8> {
        format!(
            r#"{{"merchant_id":"{merchant}","order_id":"{order}","payer":"alice","amount":{amount},"currency":"EUR"}}"#
        )
        .into_bytes()
    }

    fn signed<'a>(path: &'a str, body: &'a [u8], key: Option<&'a str>) -> Request<'a> {
        Request {
            merchant: None,
            method: "POST",
            path,
            idempotency_key: key,
            body,
        }
    }

    #[expect(
        clippy::unnecessary_wraps,
        reason = "the verdict of a request the stage verifies"
    )]
    fn by(kid: &str) -> Verdict {
        Some(Ok(kid.to_owned()))
    }

    fn refused(answer: &Answer) -> (&'static str, &str, u16) {
        match answer {
            Answer::Refused(refusal) => (refusal.code, refusal.message.as_str(), refusal.status),
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn a_run_applies_frames_and_commits_its_payments() {
        let mut world = world();
        let (good, over) = (payment("shop", "o-1", 100), payment("shop", "o-2", 600));
        let requests = [
            signed(PAYMENTS_PATH, &good, None),
            signed(PAYMENTS_PATH, &over, Some("k-2")),
        ];
        let mut staged = world.stage(&requests, &[by("shop.k1"), by("shop.k1")], 10);
        assert_eq!(staged.answers, [Answer::Applied(10), Answer::Applied(11)]);
        assert_eq!((staged.lsn_first, staged.lsn_next, staged.records()), (10, 12, 2));
        let (frames, end, reason) = wal::scan(&staged.frames, 0, 10);
        assert_eq!(
            (frames.len(), end, reason),
            (2, staged.frames.len(), wal::SCAN_END)
        );
        let payload = |at: usize| &staged.frames[frames[at].payload_at..][..frames[at].payload_len];
        let first: PaymentRecord = records::decode("payment", payload(0)).unwrap();
        assert_eq!(frames[0].record_type, logged_type(OPERATION_PAYMENT_WITH_CONSENT));
        assert_eq!(
            (first.idempotency_key, first.failure_code),
            (Some("shop\0o:o-1"), None)
        );
        assert_eq!(first.settlement_account, "shop.settlement");
        let second: PaymentRecord = records::decode("payment", payload(1)).unwrap();
        assert_eq!(second.idempotency_key, Some("shop\0k:k-2"));
        assert_eq!(second.failure_code, Some("mandate_amount_exceeded"));
        assert_eq!(world.commit(&mut staged), [("shop".to_owned(), vec![10, 11])]);
        assert!(matches!(world.results.get(10), Some(Durable::Payment(p)) if p.amount == 100));
        assert!(
            staged.commit(&mut world.results, &mut world.index).is_err(),
            "committed once"
        );
        let again = world.stage(&requests[..1], &[by("shop.k1")], 12);
        assert_eq!(again.answers, [Answer::Known(RESERVE_REPLAY, 10)]);
        assert_eq!(again.records(), 0);
    }

    #[test]
    fn a_duplicate_in_the_run_waits_for_the_first() {
        let mut world = world();
        let body = payment("shop", "o-1", 100);
        let request = signed(PAYMENTS_PATH, &body, Some("k"));
        let staged = world.stage(&[request, request], &[by("shop.k1"), by("shop.k1")], 5);
        let Answer::Known(RESERVE_IN_FLIGHT, slot) = staged.answers[1] else {
            panic!("{:?}", staged.answers);
        };
        assert_eq!(staged.lsn_of_slot(slot), Some(5));
        assert_eq!(staged.records(), 1);
    }

    #[test]
    fn refusals_come_in_the_order_the_python_intake_checked_them() {
        let mut world = world();
        let good = payment("shop", "o-1", 1);
        let theirs = payment("it's", "o-1", 1);
        let mismatch = Some(Err(Problem {
            code: PROBLEM_MISMATCH,
            detail: String::new(),
        }));
        let mut wrong_method = signed(PAYMENTS_PATH, &good, None);
        wrong_method.method = "GET";
        let authenticated = Request {
            merchant: Some("nobody"),
            ..signed(PAYMENTS_PATH, &good, None)
        };
        let requests = [
            signed(PAYMENTS_PATH, &good, Some("bad key")),
            signed(PAYMENTS_PATH, &good, None),
            wrong_method,
            signed("/v1/payments/pay_1/refund", &good, None),
            signed(PAYMENTS_PATH, &theirs, None),
            signed(PAYMENTS_PATH, b"{", None),
            authenticated,
        ];
        let verdicts = [
            mismatch.clone(),
            mismatch,
            by("shop.k1"),
            by("shop.k1"),
            by("shop.k1"),
            by("shop.k1"),
            None,
        ];
        let staged = world.stage(&requests, &verdicts, 1);
        let key = "Idempotency-Key: 1 to 255 printable ASCII characters without spaces";
        assert_eq!(refused(&staged.answers[0]), ("invalid_request", key, 400));
        assert!(matches!(&staged.answers[1], Answer::Signature(p) if p.code == PROBLEM_MISMATCH));
        assert_eq!(
            refused(&staged.answers[2]),
            ("method_not_allowed", "GET is not accepted here", 405)
        );
        assert_eq!(refused(&staged.answers[3]).0, "not_found");
        let quoted = "merchant_id \"it's\" is not the merchant of the signing key";
        assert_eq!(refused(&staged.answers[4]), ("merchant_mismatch", quoted, 403));
        assert!(refused(&staged.answers[5]).1.starts_with("invalid JSON body"));
        assert_eq!(
            refused(&staged.answers[6]),
            ("merchant_not_found", "no merchant nobody", 400)
        );
        assert_eq!(staged.records(), 0);
    }

    #[test]
    fn refunds_need_a_key_and_a_durable_payment_of_their_merchant() {
        let mut world = world();
        let body = payment("shop", "o-1", 300);
        let mut paid = world.stage(&[signed(PAYMENTS_PATH, &body, None)], &[by("shop.k1")], 10);
        world.commit(&mut paid);
        let undurable = payment("shop", "o-2", 50);
        let path = "/v1/payments/pay_10/refunds";
        let (part, too_much) = (br#"{"amount":100}"#, br#"{"amount":500}"#);
        let requests = [
            signed(path, part, None),
            signed(path, part, Some("r-1")),
            signed(path, part, Some("r-2")),
            signed(path, too_much, Some("r-3")),
            signed(PAYMENTS_PATH, &undurable, None),
            signed("/v1/payments/pay_15/refunds", b"", Some("r-4")),
        ];
        let kids = ["shop.k1", "other.k1", "shop.k1", "shop.k1", "shop.k1", "shop.k1"];
        let verdicts: Vec<Verdict> = kids.iter().map(|kid| by(kid)).collect();
        let mut staged = world.stage(&requests, &verdicts, 15);
        assert_eq!(refused(&staged.answers[0]).0, "idempotency_key_required");
        assert_eq!(
            refused(&staged.answers[1]),
            ("not_found", "no refundable payment pay_10", 404)
        );
        assert_eq!(staged.answers[2], Answer::Applied(15));
        assert_eq!(staged.answers[3], Answer::Applied(16));
        assert_eq!(staged.answers[4], Answer::Applied(17));
        assert_eq!(refused(&staged.answers[5]).0, "not_found", "not durable yet");
        let (frames, _, _) = wal::scan(&staged.frames, 0, 15);
        let payload = |at: usize| &staged.frames[frames[at].payload_at..][..frames[at].payload_len];
        let refund: RefundRecord = records::decode("refund", payload(0)).unwrap();
        assert_eq!((refund.amount, refund.failure_code), (100, None));
        assert_eq!(refund.idempotency_key, Some("shop\0r:pay_10:r-2"));
        let declined: RefundRecord = records::decode("refund", payload(1)).unwrap();
        assert_eq!(
            (declined.amount, declined.failure_code),
            (500, Some("refund_exceeds_payment"))
        );
        world.commit(&mut staged);
        assert!(matches!(world.results.get(15), Some(Durable::Refund(r)) if r.currency == "EUR"));
        assert_eq!(world.results.amount_refunded("pay_10"), 100);
    }
}
