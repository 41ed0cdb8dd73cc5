//! The rules a signed request meets before its body is read, defined once here (Python's
//! `protocol.route` and `rules.check_client_key` call them): the client's idempotency key, and
//! which endpoint the request is for. Each refusal is what the HTTP client gets.

use crate::body::is_id;
use crate::state::{lsn_in_id, PAYMENT_ID_PREFIX};

pub const PAYMENTS_PATH: &str = "/v1/payments";
const REFUNDS_SUFFIX: &str = "/refunds";

/// A request refused before anything is logged: the `RequestError` Python raises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
    pub status: u16,
}

impl Refusal {
    #[must_use]
    pub fn new(code: &'static str, message: String, status: u16) -> Self {
        Self {
            code,
            message,
            status,
        }
    }

    /// A 400 `invalid_request`.
    #[must_use]
    pub fn invalid(message: String) -> Self {
        Self::new("invalid_request", message, 400)
    }
}

/// What a routed request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    Payment,
    /// A refund of the payment with this id, logged at this LSN.
    Refund(&'a str, u64),
}

/// Why a client's `Idempotency-Key` is refused, or None: DESIGN.md's id rule. Checked before
/// the signature, so a key no client can sign is named as such, not reported as a mismatch.
#[must_use]
pub fn client_key_problem(key: &str) -> Option<&'static str> {
    (!is_id(key)).then_some("Idempotency-Key: 1 to 255 printable ASCII characters without spaces")
}

/// POST `/v1/payments` is a payment; POST `/v1/payments/pay_<lsn>/refunds` a refund of it.
///
/// # Errors
/// 405 for another method, 404 for another path.
pub fn route<'a>(method: &str, path: &'a str) -> Result<Route<'a>, Refusal> {
    if method != "POST" {
        let message = format!("{method} is not accepted here");
        return Err(Refusal::new("method_not_allowed", message, 405));
    }
    if path == PAYMENTS_PATH {
        return Ok(Route::Payment);
    }
    let paid = path
        .strip_prefix(PAYMENTS_PATH)
        .and_then(|rest| rest.strip_prefix('/'))
        .and_then(|rest| rest.strip_suffix(REFUNDS_SUFFIX));
    match paid.and_then(|paid| Some((paid, lsn_in_id(paid, PAYMENT_ID_PREFIX)?))) {
        Some((paid, lsn)) => Ok(Route::Refund(paid, lsn)),
        None => Err(Refusal::new(
            "not_found",
            format!("no such endpoint: {path}"),
            404,
        )),
    }
}

/// Python's `repr` of a str of printable ASCII (an id): how today's messages quote it.
#[must_use]
pub fn python_repr(text: &str) -> String {
    let quote = if text.contains('\'') && !text.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(text.len() + 2);
    out.push(quote);
    for char in text.chars() {
        if char == '\\' || char == quote {
            out.push('\\');
        }
        out.push(char);
    }
    out.push(quote);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payments_and_refunds_of_a_payment_id_are_routed() {
        assert_eq!(route("POST", "/v1/payments"), Ok(Route::Payment));
        assert_eq!(
            route("POST", "/v1/payments/pay_12/refunds"),
            Ok(Route::Refund("pay_12", 12))
        );
        for path in [
            "/v1/payments/pay_012/refunds",
            "/v1/payments/pay_/refunds",
            "/v1/payments/pay_1/2/refunds",
            "/v1/payments/re_1/refunds",
            "/v1/payments/pay_1/refunds/",
            "/v1/paymentspay_1/refunds",
            "/v1/payments?x=1",
        ] {
            let refusal = route("POST", path).unwrap_err();
            assert_eq!((refusal.code, refusal.status), ("not_found", 404), "{path}");
            assert_eq!(refusal.message, format!("no such endpoint: {path}"));
        }
        let refusal = route("GET", "/v1/payments").unwrap_err();
        assert_eq!(refusal.message, "GET is not accepted here");
        assert_eq!(refusal.status, 405);
    }

    #[test]
    fn client_keys_follow_the_id_rule() {
        assert_eq!(client_key_problem("key-1"), None);
        assert!(client_key_problem("").is_some());
        assert!(client_key_problem("with space").is_some());
        assert!(client_key_problem(&"k".repeat(256)).is_some());
    }

    #[test]
    fn ids_are_quoted_as_python_quotes_them() {
        assert_eq!(python_repr("m1"), "'m1'");
        assert_eq!(python_repr("it's"), "\"it's\"");
        assert_eq!(python_repr("a'b\"c"), "'a\\'b\"c'");
        assert_eq!(python_repr("back\\slash"), "'back\\\\slash'");
    }
}
