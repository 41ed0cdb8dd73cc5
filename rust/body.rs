//! Strict parsing of signed request bodies, so that every reader of a signed body sees the same
//! request: UTF-8 JSON only, no unknown or duplicate fields (also inside `metadata`), integers
//! where integers are expected (no fraction, no exponent, no strings, no booleans), and the money
//! and id rules of DESIGN.md. Each body yields its fields and a fingerprint (SHA-256 of a
//! canonical encoding) for the idempotency index, or a message naming what is wrong.

use std::collections::HashSet;
use std::fmt;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};
use serde::de::{MapAccess, SeqAccess, Visitor};
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
pub(crate) struct Metadata(pub(crate) Vec<(String, String)>);

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

/// Any JSON value, read with the strict rules: every object (at any depth) refuses a key it has
/// already seen, and numbers stay integers only when written as integers. `serde_json` refuses
/// NaN, Infinity and invalid UTF-8 itself, and nests at most 128 deep.
#[derive(Debug, PartialEq)]
enum Strict {
    Null,
    Bool(bool),
    Int(i64),
    Unsigned(u64),
    /// A fraction, an exponent, or an integer too large for 64 bits.
    Float(f64),
    Text(String),
    List(Vec<Strict>),
    Object(Vec<(String, Strict)>),
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict::Null)
    }

    fn visit_bool<E>(self, value: bool) -> Result<Strict, E> {
        Ok(Strict::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Strict, E> {
        Ok(Strict::Int(value))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Strict, E> {
        Ok(Strict::Unsigned(value))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Strict, E> {
        Ok(Strict::Float(value))
    }

    fn visit_str<E>(self, value: &str) -> Result<Strict, E> {
        Ok(Strict::Text(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Strict, E> {
        Ok(Strict::Text(value))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Strict::List(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        let (mut seen, mut pairs) = (HashSet::new(), Vec::new());
        while let Some((key, value)) = map.next_entry::<String, Strict>()? {
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!("duplicate field `{key}`")));
            }
            pairs.push((key, value));
        }
        Ok(Strict::Object(pairs))
    }
}

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor)
    }
}

fn parse_object(body: &[u8]) -> Result<Strict, String> {
    match serde_json::from_slice(body).map_err(|error| json_error(&error))? {
        object @ Strict::Object(_) => Ok(object),
        _ => Err("the body must be a JSON object".to_owned()),
    }
}

fn strict_to_python(py: Python<'_>, value: Strict) -> PyResult<Bound<'_, PyAny>> {
    Ok(match value {
        Strict::Null => py.None().into_bound(py),
        Strict::Bool(value) => value.into_pyobject(py)?.to_owned().into_any(),
        Strict::Int(value) => value.into_pyobject(py)?.into_any(),
        Strict::Unsigned(value) => value.into_pyobject(py)?.into_any(),
        Strict::Float(value) => value.into_pyobject(py)?.into_any(),
        Strict::Text(value) => PyString::new(py, &value).into_any(),
        Strict::List(items) => {
            let items = items
                .into_iter()
                .map(|item| strict_to_python(py, item))
                .collect::<PyResult<Vec<_>>>()?;
            PyList::new(py, items)?.into_any()
        }
        Strict::Object(pairs) => {
            let dict = PyDict::new(py);
            for (key, value) in pairs {
                dict.set_item(key, strict_to_python(py, value)?)?;
            }
            dict.into_any()
        }
    })
}

/// A JSON object body under the strict rules of signed bodies (see `Strict`): a `dict` whose
/// numbers are `int` only when written as integers, or the message that refuses it. The caller
/// checks the fields it expects (and refuses the others).
#[pyfunction]
pub fn parse_json_object<'py>(py: Python<'py>, body: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    match parse_object(body) {
        Ok(object) => strict_to_python(py, object),
        Err(message) => Ok(PyString::new(py, &message).into_any()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PaymentBody {
    pub(crate) merchant_id: String,
    pub(crate) order_id: String,
    pub(crate) payer: String,
    pub(crate) amount: u64,
    pub(crate) currency: String,
    #[serde(default)]
    pub(crate) description: Option<String>,
    #[serde(default)]
    pub(crate) metadata: Option<Metadata>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RefundBody {
    #[serde(default)]
    pub(crate) amount: Option<u64>,
    #[serde(default)]
    pub(crate) reason: Option<String>,
}

/// What breaks DESIGN.md's id rule (1 to 255 printable ASCII characters, no spaces), the one
/// definition of it: body fields, key ids (`keyring`) and Python's checks (`is_id`) use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdProblem {
    Length,
    Characters,
}

#[must_use]
pub fn id_problem(id: &str) -> Option<IdProblem> {
    if id.is_empty() || id.len() > ID_LEN_MAX {
        Some(IdProblem::Length)
    } else if !id.bytes().all(|byte| byte.is_ascii_graphic()) {
        Some(IdProblem::Characters)
    } else {
        None
    }
}

/// Whether `id` follows DESIGN.md's id rule (see `id_problem`).
#[pyfunction]
#[must_use]
pub fn is_id(id: &str) -> bool {
    id_problem(id).is_none()
}

/// Ids (merchants, orders, accounts, idempotency keys): 1 to 255 printable ASCII, no spaces.
pub fn check_id(field: &str, id: &str) -> Result<(), String> {
    if !is_id(id) {
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

/// DESIGN.md's currency rule, defined once: an ISO 4217 code, 3 uppercase ASCII letters.
#[pyfunction]
#[must_use]
pub fn is_currency(currency: &str) -> bool {
    currency.len() == 3 && currency.bytes().all(|byte| byte.is_ascii_uppercase())
}

pub fn check_currency(currency: &str) -> Result<(), String> {
    if !is_currency(currency) {
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

pub(crate) fn parse_payment(body: &[u8]) -> Result<(PaymentBody, Digest), String> {
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

pub(crate) fn parse_refund(body: &[u8]) -> Result<(RefundBody, Digest), String> {
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
    fn a_strict_object_refuses_duplicates_at_any_depth_and_keeps_fractions_apart() {
        for (body, expected) in [
            (
                r#"{"amount":1,"amount":1000000000000000}"#,
                "duplicate field `amount`",
            ),
            (r#"{"a":{"b":1,"b":2}}"#, "duplicate field `b`"),
            (r#"{"a":[{"b":1,"b":2}]}"#, "duplicate field `b`"),
            (r#"{"amount":NaN}"#, "expected value"),
            (r#"{"amount":Infinity}"#, "expected value"),
            ("[1]", "must be a JSON object"),
            ("", "invalid JSON body"),
        ] {
            let message = parse_object(body.as_bytes()).expect_err(body);
            assert!(message.contains(expected), "{body}: {message}");
        }
        assert!(parse_object(b"{\"a\":\"\xff\"}").is_err(), "not UTF-8");
        let parsed = parse_object(br#"{"i":-1,"u":18446744073709551615,"f":1.0,"e":1e3}"#);
        let expected = Strict::Object(vec![
            ("i".to_owned(), Strict::Int(-1)),
            ("u".to_owned(), Strict::Unsigned(u64::MAX)),
            ("f".to_owned(), Strict::Float(1.0)),
            ("e".to_owned(), Strict::Float(1000.0)),
        ]);
        assert_eq!(parsed.unwrap(), expected);
    }

    #[test]
    fn refunds_take_an_optional_amount() {
        assert_eq!(parse_refund(b"").unwrap().0.amount, None);
        assert_eq!(parse_refund(br#"{"amount":5}"#).unwrap().0.amount, Some(5));
        assert!(parse_refund(br#"{"amount":0}"#).is_err());
        assert!(parse_refund(br#"{"amount":5,"amount":6}"#).is_err());
    }
}
