//! Strict parsing of signed request bodies, so that every reader of a signed body sees the same
//! request: UTF-8 JSON only, no unknown or duplicate fields (also inside `metadata`), integers
//! where integers are expected (no fraction, no exponent, no strings, no booleans), and the money
//! and id rules of DESIGN.md. Each body yields its fields and a fingerprint (SHA-256 of a
//! canonical encoding) for the idempotency index, or a message naming what is wrong.

use std::fmt;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::convert::read_bytes_items;
use crate::digest::{self, Digest};

pub const AMOUNT_MAX: u64 = 1_000_000_000_000_000;
pub const ID_LEN_MAX: usize = 255;
pub const DESCRIPTION_LEN_MAX: usize = 1000;
pub const METADATA_KEYS_MAX: usize = 50;
pub const METADATA_KEY_LEN_MAX: usize = 40;
pub const METADATA_VALUE_LEN_MAX: usize = 500;

/// `metadata`: string keys to string values, each key at most once.
#[derive(Debug, Default)]
struct Metadata(Vec<(String, String)>);

struct MetadataVisitor;

impl<'de> Visitor<'de> for MetadataVisitor {
    type Value = Metadata;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("an object of string values")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Metadata, A::Error> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        while let Some((key, value)) = map.next_entry::<String, String>()? {
            if pairs.iter().any(|(seen, _)| *seen == key) {
                return Err(serde::de::Error::custom(format!(
                    "duplicate metadata key `{key}`"
                )));
            }
            if pairs.len() == METADATA_KEYS_MAX {
                return Err(serde::de::Error::custom("metadata has more than 50 keys"));
            }
            pairs.push((key, value));
        }
        Ok(Metadata(pairs))
    }
}

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(MetadataVisitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PaymentBody {
    merchant_id: String,
    order_id: String,
    payer: String,
    amount: u64,
    currency: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    metadata: Option<Metadata>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefundBody {
    #[serde(default)]
    amount: Option<u64>,
    #[serde(default)]
    reason: Option<String>,
}

/// Ids (merchants, orders, accounts, idempotency keys): 1 to 255 printable ASCII, no spaces.
pub fn check_id(field: &str, id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > ID_LEN_MAX || !id.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err(format!(
            "{field}: must be 1 to 255 printable ASCII characters without spaces"
        ));
    }
    Ok(())
}

pub fn check_amount(field: &str, amount: u64) -> Result<(), String> {
    if amount == 0 || amount > AMOUNT_MAX {
        return Err(format!(
            "{field}: must be an integer from 1 to 10^15 (minor units)"
        ));
    }
    Ok(())
}

pub fn check_currency(currency: &str) -> Result<(), String> {
    if currency.len() != 3 || !currency.bytes().all(|byte| byte.is_ascii_uppercase()) {
        return Err("currency: must be an ISO 4217 code of 3 uppercase letters".to_owned());
    }
    Ok(())
}

fn check_text(field: &str, text: &str, len_max: usize) -> Result<(), String> {
    if text.chars().count() > len_max {
        return Err(format!("{field}: must be at most {len_max} characters"));
    }
    Ok(())
}

fn check_metadata(metadata: &Metadata) -> Result<(), String> {
    for (key, value) in &metadata.0 {
        if key.is_empty() || key.chars().count() > METADATA_KEY_LEN_MAX {
            return Err(format!("metadata: key {key:?} must be 1 to 40 characters"));
        }
        check_text(&format!("metadata[{key:?}]"), value, METADATA_VALUE_LEN_MAX)?;
    }
    Ok(())
}

/// A canonical, unambiguous encoding of the fields: each one length-prefixed, metadata sorted.
struct Canonical(Vec<u8>);

impl Canonical {
    fn field(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        self.0.extend_from_slice(bytes);
        self
    }

    fn optional(&mut self, text: Option<&str>) -> &mut Self {
        match text {
            None => self.field(b"\x00"),
            Some(text) => self.field(b"\x01").field(text.as_bytes()),
        }
    }

    fn digest(&self) -> Digest {
        digest::sha256(&self.0)
    }
}

fn json_error(error: &serde_json::Error) -> String {
    format!("invalid JSON body: {error}")
}

fn parse_payment(body: &[u8]) -> Result<(PaymentBody, Digest), String> {
    let payment: PaymentBody = serde_json::from_slice(body).map_err(|error| json_error(&error))?;
    check_id("merchant_id", &payment.merchant_id)?;
    check_id("order_id", &payment.order_id)?;
    check_id("payer", &payment.payer)?;
    check_amount("amount", payment.amount)?;
    check_currency(&payment.currency)?;
    if let Some(description) = &payment.description {
        check_text("description", description, DESCRIPTION_LEN_MAX)?;
    }
    let mut canonical = Canonical(Vec::with_capacity(body.len() + 64));
    canonical
        .field(b"payment")
        .field(payment.merchant_id.as_bytes())
        .field(payment.order_id.as_bytes())
        .field(payment.payer.as_bytes())
        .field(&payment.amount.to_le_bytes())
        .field(payment.currency.as_bytes())
        .optional(payment.description.as_deref());
    if let Some(metadata) = &payment.metadata {
        check_metadata(metadata)?;
        let mut pairs: Vec<&(String, String)> = metadata.0.iter().collect();
        pairs.sort();
        for (key, value) in pairs {
            canonical.field(key.as_bytes()).field(value.as_bytes());
        }
    }
    Ok((payment, canonical.digest()))
}

fn parse_refund(body: &[u8]) -> Result<(RefundBody, Digest), String> {
    let refund: RefundBody = if body.iter().all(u8::is_ascii_whitespace) {
        RefundBody {
            amount: None,
            reason: None,
        }
    } else {
        serde_json::from_slice(body).map_err(|error| json_error(&error))?
    };
    if let Some(amount) = refund.amount {
        check_amount("amount", amount)?;
    }
    if let Some(reason) = &refund.reason {
        check_text("reason", reason, METADATA_VALUE_LEN_MAX)?;
    }
    let mut canonical = Canonical(Vec::with_capacity(64));
    canonical
        .field(b"refund")
        .field(&refund.amount.unwrap_or(0).to_le_bytes())
        .optional(refund.reason.as_deref());
    Ok((refund, canonical.digest()))
}

fn payment_object<'py>(
    py: Python<'py>,
    payment: PaymentBody,
    fingerprint: &Digest,
) -> PyResult<Bound<'py, PyAny>> {
    let metadata = match payment.metadata {
        None => py.None().into_bound(py),
        Some(Metadata(pairs)) => {
            let dict = PyDict::new(py);
            for (key, value) in pairs {
                dict.set_item(key, value)?;
            }
            dict.into_any()
        }
    };
    let fields = (
        payment.merchant_id,
        payment.order_id,
        payment.payer,
        payment.amount,
        payment.currency,
        payment.description,
        metadata,
        PyBytes::new(py, fingerprint),
    );
    Ok(fields.into_pyobject(py)?.into_any())
}

/// Per body, `(merchant_id, order_id, payer, amount, currency, description, metadata,
/// fingerprint)` or the message that refuses it.
#[pyfunction]
pub fn parse_payment_bodies<'py>(
    py: Python<'py>,
    bodies: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyList>> {
    let parsed = read_bytes_items("bodies", bodies, |_, body| Ok(parse_payment(body)))?;
    let items = parsed
        .into_iter()
        .map(|result| match result {
            Ok((payment, fingerprint)) => payment_object(py, payment, &fingerprint),
            Err(message) => Ok(PyString::new(py, &message).into_any()),
        })
        .collect::<PyResult<Vec<_>>>()?;
    PyList::new(py, items)
}

/// Per body, `(amount or None for the whole remainder, reason, fingerprint)` or the message that
/// refuses it. An empty body is a full refund.
#[pyfunction]
pub fn parse_refund_bodies<'py>(py: Python<'py>, bodies: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
    let parsed = read_bytes_items("bodies", bodies, |_, body| Ok(parse_refund(body)))?;
    let items = parsed
        .into_iter()
        .map(|result| match result {
            Ok((refund, fingerprint)) => Ok((refund.amount, refund.reason, PyBytes::new(py, &fingerprint))
                .into_pyobject(py)?
                .into_any()),
            Err(message) => Ok(PyString::new(py, &message).into_any()),
        })
        .collect::<PyResult<Vec<_>>>()?;
    PyList::new(py, items)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &[u8] =
        br#"{"merchant_id":"m1","order_id":"o-1","payer":"alice","amount":1999,"currency":"EUR"}"#;

    fn refused(body: &str) -> String {
        parse_payment(body.as_bytes()).expect_err(body)
    }

    #[test]
    fn a_well_formed_payment_parses() {
        let (payment, _) = parse_payment(GOOD).expect("valid");
        assert_eq!((payment.amount, payment.currency.as_str()), (1999, "EUR"));
    }

    #[test]
    fn ambiguous_or_wrong_json_is_refused() {
        let base = r#""merchant_id":"m1","order_id":"o","payer":"a","currency":"EUR""#;
        for (body, expected) in [
            (
                format!(r#"{{{base},"amount":1,"amount":2}}"#),
                "duplicate field `amount`",
            ),
            (format!(r#"{{{base},"amount":1.5}}"#), "invalid type"),
            (format!(r#"{{{base},"amount":1e3}}"#), "invalid type"),
            (format!(r#"{{{base},"amount":"100"}}"#), "invalid type"),
            (format!(r#"{{{base},"amount":true}}"#), "invalid type"),
            (format!(r#"{{{base},"amount":-5}}"#), "invalid value"),
            (format!(r#"{{{base},"amount":NaN}}"#), "expected value"),
            (
                format!(r#"{{{base},"amount":0}}"#),
                "amount: must be an integer from 1",
            ),
            (
                format!(r#"{{{base},"amount":1000000000000001}}"#),
                "amount: must be an integer from 1",
            ),
            (
                format!(r#"{{{base},"amount":1,"extra":1}}"#),
                "unknown field `extra`",
            ),
            (
                format!(r#"{{{base},"amount":1,"metadata":{{"k":"a","k":"b"}}}}"#),
                "duplicate metadata key",
            ),
            (
                format!(r#"{{{base},"amount":1,"metadata":{{"k":1}}}}"#),
                "invalid type",
            ),
        ] {
            let message = refused(&body);
            assert!(message.contains(expected), "{body}: {message}");
        }
        assert!(parse_payment(b"{\"merchant_id\":\"\xff\"}").is_err(), "not UTF-8");
    }

    #[test]
    fn ids_and_currencies_follow_the_rules() {
        let with = |field: &str, value: &str| {
            let mut json: serde_json::Value = serde_json::from_slice(GOOD).unwrap();
            json[field] = serde_json::Value::String(value.to_owned());
            parse_payment(json.to_string().as_bytes()).err()
        };
        assert!(with("payer", "has space").is_some());
        assert!(with("payer", "").is_some());
        assert!(with("payer", &"x".repeat(256)).is_some());
        assert!(with("payer", &"x".repeat(255)).is_none());
        assert!(with("currency", "eur").is_some());
        assert!(with("currency", "EURO").is_some());
    }

    #[test]
    fn the_fingerprint_ignores_key_order_and_whitespace_but_not_values() {
        let (_, first) = parse_payment(GOOD).unwrap();
        let reordered =
            br#"{ "amount": 1999, "currency":"EUR","payer":"alice","order_id":"o-1","merchant_id":"m1" }"#;
        assert_eq!(parse_payment(reordered).unwrap().1, first);
        let other =
            br#"{"merchant_id":"m1","order_id":"o-1","payer":"alice","amount":1998,"currency":"EUR"}"#;
        assert_ne!(parse_payment(other).unwrap().1, first);
    }

    #[test]
    fn refunds_take_an_optional_amount() {
        assert_eq!(parse_refund(b"").unwrap().0.amount, None);
        assert_eq!(parse_refund(br#"{"amount":5}"#).unwrap().0.amount, Some(5));
        assert!(parse_refund(br#"{"amount":0}"#).is_err());
        assert!(parse_refund(br#"{"amount":5,"amount":6}"#).is_err());
    }
}
