//! The snapshot format of the results: every result, compact, versioned, with a CRC-32C trailer
//! (the field encoding of `codec`), loaded back with every reference checked. The indexes are
//! not written: loading rebuilds them.
//!
//! `text` is a u32 (0: none, else its byte length + 1) and its bytes. In order:
//!
//! | field        | encoding                                                                 |
//! |--------------|--------------------------------------------------------------------------|
//! | magic        | 8 bytes `IPRESLT\0`                                                      |
//! | version      | u32 (1), u32 flags (0)                                                   |
//! | merchants    | u32 count; each: str id                                                  |
//! | payers       | u32 count; each: str account id                                          |
//! | currencies   | u32 count (at most 65536); each: str                                     |
//! | results      | u64 count; each, in log order: u64 LSN, u8 kind (0 payment, 1 refund),   |
//! |              | u8 code (bit 7: failed; the rest 0, or 1 + the index in `FAILURES`),     |
//! |              | u32 merchant, u16 currency, i64 amount, i64 created; then a payment's    |
//! |              | u32 payer, text order id, text description, text metadata (JSON); a      |
//! |              | refund's text payment id, text reason                                    |
//! | checksum     | u32 CRC-32C of every byte before it                                      |
//!
//! Names keep the order they were first seen in, so results rebuilt from the log and loaded from
//! a snapshot encode to the same bytes.

use super::{Code, Durable, Interned, Results};
use crate::error::{CoreError, CoreResult};
use crate::state::codec::{Reader, Writer};
use crate::state::names::Names;

const MAGIC: &[u8; 8] = b"IPRESLT\0";
const VERSION: u32 = 1;
/// The bytes of a payment with short texts, to size the buffer.
const RESULT_LEN: usize = 64;

fn corrupt(reason: String) -> CoreError {
    CoreError::CorruptResults(reason)
}

fn text(out: &mut Writer, text: Option<&[u8]>) {
    match text {
        None => out.u32(0),
        Some(text) => {
            out.u32(u32::try_from(text.len() + 1).expect("texts are below 4 GiB"));
            out.0.extend_from_slice(text);
        }
    }
}

fn names(out: &mut Writer, names: &Names) {
    out.len(names.len());
    for name in names.iter() {
        out.str(name);
    }
}

#[must_use]
pub fn encode(results: &Results) -> Vec<u8> {
    let mut out = Writer::new(*MAGIC, VERSION, 64 + results.len() * RESULT_LEN);
    names(&mut out, &results.merchants);
    names(&mut out, &results.payers);
    names(&mut out, &results.currencies);
    out.u64(results.len() as u64);
    for entry in results.entries.iter() {
        out.u64(entry.lsn);
        out.u8(u8::from(entry.refund));
        out.u8(entry.code.byte());
        out.u32(entry.merchant);
        out.u16(entry.currency);
        out.i64(entry.amount);
        out.i64(entry.created_s);
        match results.view(entry) {
            Durable::Payment(payment) => {
                out.u32(entry.payer);
                text(&mut out, Some(payment.order_id.as_bytes()));
                text(&mut out, payment.description.map(str::as_bytes));
                text(&mut out, payment.metadata);
            }
            Durable::Refund(refund) => {
                text(&mut out, Some(refund.payment_id.as_bytes()));
                text(&mut out, refund.reason.map(str::as_bytes));
            }
        }
    }
    out.seal()
}

fn read_names(reader: &mut Reader<'_>, names: &mut Names, what: &str) -> CoreResult<()> {
    for index in 0..reader.u32()? {
        let name = reader.str()?;
        if names.intern(name)? != index {
            return Err(reader.error(format!("{what} {name} is listed twice")));
        }
    }
    Ok(())
}

fn read_text<'a>(reader: &mut Reader<'a>, utf8: bool) -> CoreResult<Option<&'a [u8]>> {
    let Some(len) = reader.u32()?.checked_sub(1) else {
        return Ok(None);
    };
    let bytes = reader.bytes(len as usize)?;
    if utf8 && std::str::from_utf8(bytes).is_err() {
        return Err(reader.error("a text is not UTF-8"));
    }
    Ok(Some(bytes))
}

/// Results from `encode`'s bytes, every reference checked.
///
/// # Errors
/// `CorruptResults` for bytes `encode` did not write (or that were damaged since).
pub fn decode(data: &[u8]) -> CoreResult<Results> {
    let mut reader = Reader::open(data, *MAGIC, VERSION, corrupt)?;
    let mut results = Results::default();
    read_names(&mut reader, &mut results.merchants, "merchant")?;
    read_names(&mut reader, &mut results.payers, "payer")?;
    read_names(&mut reader, &mut results.currencies, "currency")?;
    if results.currencies.len() > usize::from(u16::MAX) + 1 {
        return Err(reader.error("more than 65536 currencies"));
    }
    for _ in 0..reader.u64()? {
        let result = read_result(&mut reader, &results)?;
        results
            .push(&result)
            .map_err(|error| corrupt(error.to_string()))?;
    }
    reader.finish("results")?;
    Ok(results)
}

fn read_result<'a>(reader: &mut Reader<'a>, results: &Results) -> CoreResult<Interned<'a>> {
    let lsn = reader.u64()?;
    let refund = reader.flag("a result kind")?;
    let byte = reader.u8()?;
    let code = Code::from_byte(byte).ok_or_else(|| reader.error(format!("result code {byte} is unknown")))?;
    let merchant = reader.index("merchant", results.merchants.len())?;
    let currency = reader.u16()?;
    if usize::from(currency) >= results.currencies.len() {
        return Err(reader.error(format!("currency {currency} is not held")));
    }
    let (amount, created_s) = (reader.i64()?, reader.i64()?);
    let payer = if refund {
        0
    } else {
        reader.index("payer", results.payers.len())?
    };
    let first = read_text(reader, true)?;
    if first.is_none() {
        return Err(reader.error(format!("result {lsn} has no order or payment id")));
    }
    let second = read_text(reader, true)?;
    let third = if refund { None } else { read_text(reader, false)? };
    Ok(Interned {
        lsn,
        refund,
        code,
        merchant,
        payer,
        currency,
        amount,
        created_s,
        texts: [first, second, third],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::codec::testing::{check_damage_refused, resealed};
    use crate::state::codec::CRC_LEN;
    use crate::state::results::tests::busy_results;

    #[test]
    fn a_snapshot_restores_the_same_results_and_the_same_bytes() {
        let results = busy_results();
        let encoded = encode(&results);
        let restored = decode(&encoded).unwrap();
        assert!(restored.iter().eq(results.iter()));
        assert_eq!(encode(&restored), encoded);
        assert_eq!(restored.payments_for_order("shop", "order-1"), [1, 4]);
        assert_eq!(
            (restored.refunds_of("pay_1"), restored.amount_refunded("pay_1")),
            (vec![3, 5], 500)
        );
        assert_eq!(restored.refunds_of("pay_x"), [6]);
        assert_eq!(decode(&encode(&Results::default())).unwrap().len(), 0);
    }

    #[test]
    fn a_damaged_snapshot_is_refused() {
        let encoded = encode(&busy_results());
        check_damage_refused(&encoded, decode, |error| {
            matches!(error, CoreError::CorruptResults(_))
        });
    }

    #[test]
    fn a_forged_result_is_refused() {
        // The last result (a refund at LSN 6) starts with its LSN: make it 5, not above the last.
        let mut forged = encode(&busy_results());
        let reason = "requested_by_customer".len() + 4;
        let at = forged.len() - CRC_LEN - reason - ("pay_x".len() + 4) - 32;
        assert_eq!(forged[at..at + 8], 6u64.to_le_bytes());
        forged[at..at + 8].copy_from_slice(&5u64.to_le_bytes());
        let error = decode(&resealed(forged)).unwrap_err().to_string();
        assert!(error.contains("result LSN 5 is not above"), "{error}");
    }
}
