//! The log records of the hot path, payments and refunds, encoded and decoded natively: the same
//! `MessagePack` arrays (version 1) that `python/instapay/engine/records.py` defines as msgspec
//! Structs (`PaymentRecord`, `RefundRecord`), field for field and in the same order, so a record
//! written here is read by `instapay wal dump` and a record written by Python replays here.
//!
//! Decoding borrows every string from the payload: a replay copies nothing it does not keep.
//! A field added to either record is a new version on both sides (see records.py).

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{CoreError, CoreResult};

/// `RecordType` numbers of records.py (the low byte of a logged type) and the version written.
pub const OPERATION_PAYMENT: u16 = 4;
pub const OPERATION_REFUND: u16 = 5;
pub const OPERATION_PAYMENT_WITH_CONSENT: u16 = 15;
pub const VERSION_CURRENT: u16 = 1;
const VERSION_SHIFT: u16 = 8;

/// The WAL type a record of `operation` is written under today.
#[must_use]
pub const fn logged_type(operation: u16) -> u16 {
    VERSION_CURRENT << VERSION_SHIFT | operation
}

/// A payment's metadata: string keys to string values, in the order the request gave them
/// (a `MessagePack` map, as msgspec writes a dict).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Metadata<'a>(pub Vec<(&'a str, &'a str)>);

/// `PaymentRecord` of records.py: `PAYMENT_WITH_CONSENT` (and `PAYMENT`, replayed by the rules
/// before consent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRecord<'a> {
    pub merchant_id: &'a str,
    pub order_id: &'a str,
    pub payer: &'a str,
    pub settlement_account: &'a str,
    pub amount: i64,
    pub currency: &'a str,
    #[serde(borrow)]
    pub description: Option<&'a str>,
    #[serde(borrow)]
    pub metadata: Option<Metadata<'a>>,
    pub created_s: i64,
    /// None in logs written before payments took keys.
    #[serde(borrow)]
    pub idempotency_key: Option<&'a str>,
    /// Hex.
    pub fingerprint: &'a str,
    #[serde(borrow, default)]
    pub failure_code: Option<&'a str>,
}

/// `RefundRecord` of records.py, with what the refund gave back and its failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundRecord<'a> {
    pub payment_id: &'a str,
    pub merchant_id: &'a str,
    pub amount_requested: Option<i64>,
    #[serde(borrow)]
    pub reason: Option<&'a str>,
    pub created_s: i64,
    #[serde(borrow)]
    pub idempotency_key: Option<&'a str>,
    /// Hex.
    pub fingerprint: &'a str,
    #[serde(default)]
    pub amount: i64,
    #[serde(borrow, default)]
    pub failure_code: Option<&'a str>,
}

/// Appends the record's `MessagePack` array to `out` (one WAL payload).
///
/// # Panics
/// Never: writing into a `Vec` cannot fail, and every field of these records has a
/// `MessagePack` form.
pub fn encode_into<T: Serialize>(record: &T, out: &mut Vec<u8>) {
    rmp_serde::encode::write(out, record).expect("a record always encodes");
}

#[must_use]
pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    encode_into(record, &mut out);
    out
}

/// The record in `payload`, its strings borrowed from it.
///
/// # Errors
/// `CoreError::CorruptRecord`, naming the record type, when the payload is not one.
pub fn decode<'a, T: Deserialize<'a>>(what: &'static str, payload: &'a [u8]) -> CoreResult<T> {
    rmp_serde::from_slice(payload).map_err(|error| CoreError::CorruptRecord {
        what,
        detail: error.to_string(),
    })
}

impl Metadata<'_> {
    /// The metadata as the JSON object the results store keeps (what orjson wrote of the dict
    /// Python held): keys in the request's order, a repeated key (a map no request could send,
    /// the body parser refuses it) keeping its last value where it first appeared, as a dict
    /// does. Written into `out`, which is cleared first (a replay reuses one buffer).
    ///
    /// # Panics
    /// Never: strings always encode, into a Vec that cannot fail to grow but by aborting.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let mut pairs: Vec<(&str, &str)> = Vec::with_capacity(self.0.len());
        for &(key, value) in &self.0 {
            match pairs.iter_mut().find(|(held, _)| *held == key) {
                Some(pair) => pair.1 = value,
                None => pairs.push((key, value)),
            }
        }
        out.clear();
        // Writing strings into a Vec cannot fail.
        serde_json::to_writer(&mut *out, &Metadata(pairs)).expect("strings always encode");
    }
}

impl Serialize for Metadata<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

struct MetadataVisitor;

impl<'de> Visitor<'de> for MetadataVisitor {
    type Value = Metadata<'de>;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a map of strings to strings")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Metadata<'de>, A::Error> {
        let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(0));
        while let Some(pair) = map.next_entry::<&'de str, &'de str>()? {
            pairs.push(pair);
        }
        Ok(Metadata(pairs))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Metadata<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(MetadataVisitor)
    }
}

/// The bytes of a hex string: the tests' payloads as captured from msgspec.
#[cfg(test)]
pub(crate) fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&text[at..at + 2], 16).unwrap())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FINGERPRINT_AB: &str = "abababababababababababababababababababababababababababababababab";

    // What msgspec writes for these records (records.py `encode`), captured from Python.
    const PAYMENT_WITH_METADATA: &str = "9ca26d31a36f2d31a5616c696365a6736574746c65cd07cfa3455552c082a162a132a161a131ce6553f100a86d31006f3a6f2d31d94061626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162c0";
    const PAYMENT_DECLINED: &str = "9ca26d31a36f2d31a5616c696365a6736574746c65cd07cfa3455552a464657363c0ce6553f100c0d94061626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162b2696e73756666696369656e745f66756e6473";
    const REFUND: &str = "99a57061795f37a26d31c0a3647570ce6553f100ac6d3100723a7061795f373a6bd94063646364636463646364636463646364636463646364636463646364636463646364636463646364636463646364636463646364636463646364636463646364cd01f4c0";

    fn payment_with_metadata() -> PaymentRecord<'static> {
        PaymentRecord {
            merchant_id: "m1",
            order_id: "o-1",
            payer: "alice",
            settlement_account: "settle",
            amount: 1999,
            currency: "EUR",
            description: None,
            metadata: Some(Metadata(vec![("b", "2"), ("a", "1")])),
            created_s: 1_700_000_000,
            idempotency_key: Some("m1\0o:o-1"),
            fingerprint: FINGERPRINT_AB,
            failure_code: None,
        }
    }

    #[test]
    fn payments_encode_as_msgspec_writes_them() {
        assert_eq!(encode(&payment_with_metadata()), unhex(PAYMENT_WITH_METADATA));
        let declined = PaymentRecord {
            description: Some("desc"),
            metadata: None,
            idempotency_key: None,
            failure_code: Some("insufficient_funds"),
            ..payment_with_metadata()
        };
        assert_eq!(encode(&declined), unhex(PAYMENT_DECLINED));
    }

    #[test]
    fn payments_written_by_msgspec_decode_field_for_field() {
        let payload = unhex(PAYMENT_WITH_METADATA);
        let record: PaymentRecord = decode("payment", &payload).unwrap();
        assert_eq!(record, payment_with_metadata());
        let payload = unhex(PAYMENT_DECLINED);
        let declined: PaymentRecord = decode("payment", &payload).unwrap();
        assert_eq!(declined.failure_code, Some("insufficient_funds"));
        assert_eq!(declined.description, Some("desc"));
    }

    #[test]
    fn refunds_round_trip_and_match_msgspec() {
        let refund = RefundRecord {
            payment_id: "pay_7",
            merchant_id: "m1",
            amount_requested: None,
            reason: Some("dup"),
            created_s: 1_700_000_000,
            idempotency_key: Some("m1\0r:pay_7:k"),
            fingerprint: "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd",
            amount: 500,
            failure_code: None,
        };
        let payload = encode(&refund);
        assert_eq!(payload, unhex(REFUND));
        assert_eq!(decode::<RefundRecord>("refund", &payload).unwrap(), refund);
    }

    #[test]
    fn a_record_without_its_trailing_outcome_decodes_with_the_defaults() {
        // Eleven fields: a payment array without its failure code, as msgspec would read it.
        let mut payload = unhex(PAYMENT_WITH_METADATA);
        payload[0] = 0x9b;
        payload.pop();
        let record: PaymentRecord = decode("payment", &payload).unwrap();
        assert_eq!(record.failure_code, None);
    }

    #[test]
    fn a_payload_that_is_not_a_record_is_refused_by_name() {
        for payload in [&b""[..], b"\x93\x01\x02\x03", b"\xc1"] {
            let error = decode::<PaymentRecord>("payment", payload).unwrap_err();
            assert!(error.to_string().contains("payment"), "{error}");
        }
    }

    #[test]
    fn logged_types_carry_the_version() {
        assert_eq!(logged_type(OPERATION_PAYMENT_WITH_CONSENT), 271);
        assert_eq!(logged_type(OPERATION_REFUND), 261);
    }
}
