//! The snapshot format of the ledger: the whole state, compact, versioned, with a CRC-32C
//! trailer, loaded back with every reference checked and then the ledger's invariants.
//!
//! Hand-rolled, in the style of the idempotency index's dump, rather than serde with a binary
//! format crate: the layout below is the documentation (a reader in another language needs
//! nothing else), no dependency is added, and the reader checks each field as it goes (an index
//! in range, a name unique, LSNs increasing) where a derived decoder would build first and leave
//! the checks to a second pass.
//!
//! All integers little-endian; `str` is a u32 byte length and UTF-8 bytes; `opt` is a u8 (0
//! none, 1 some) and, if some, an i64. In order:
//!
//! | field                  | encoding                                                        |
//! |------------------------|-----------------------------------------------------------------|
//! | magic                  | 8 bytes `IPLEDGR\0`                                             |
//! | version, flags         | u32 (1), u32 (0)                                                |
//! | currencies             | u32 count; each: str name, i64 net inflow                       |
//! | accounts               | u32 count; each: str id, u32 currency, i64 balance, u8          |
//! |                        | overdraft, u8 owner (0 customer, 1 merchant)                    |
//! | merchants              | u32 count; each: str id (the merchant ids mandates name)        |
//! | mandates               | u32 count; each: u64 LSN, u32 payer account, u32 merchant, i64  |
//! |                        | per payment, opt per day, opt expires at, i64 created, opt      |
//! |                        | revoked at, i64 spent day, i64 spent                            |
//! | payments               | u64 count; each: u64 LSN, u32 payer, u32 settlement, i64        |
//! |                        | amount, i64 refunded, u32 mandate index (`u32::MAX`: none)      |
//! | checksum               | u32 CRC-32C of every byte before it                             |
//!
//! Names, accounts and mandates keep the order they were first seen in, so a ledger rebuilt
//! from the log and one loaded from a snapshot encode to the same bytes.

use super::accounts::{Account, Owner, BALANCE_MAX};
use super::codec::{Reader, Writer};
use super::ledger::Ledger;
use super::mandates::{Mandate, Terms};
use super::payments::Payment;
use crate::error::{CoreError, CoreResult};

const MAGIC: &[u8; 8] = b"IPLEDGR\0";
const VERSION: u32 = 1;
const NO_MANDATE: u32 = u32::MAX;
/// The bytes of a payment row.
const PAYMENT_LEN: usize = 36;

#[must_use]
pub fn encode(ledger: &Ledger) -> Vec<u8> {
    let mut out = Writer::new(*MAGIC, VERSION, 64 + ledger.payments.len() * PAYMENT_LEN);
    let accounts = &ledger.accounts;
    out.len(accounts.currencies().count());
    for (name, inflow) in accounts.currencies() {
        out.str(name);
        out.i64(inflow);
    }
    out.len(accounts.len());
    for (id, account) in accounts.iter() {
        out.str(id);
        out.u32(account.currency);
        out.i64(account.balance);
        out.u8(u8::from(account.overdraft));
        out.u8(u8::from(account.owner == Owner::Merchant));
    }
    out.len(ledger.mandates.merchant_names().count());
    for name in ledger.mandates.merchant_names() {
        out.str(name);
    }
    out.len(ledger.mandates.len());
    for mandate in ledger.mandates.iter() {
        encode_mandate(&mut out, mandate);
    }
    // The hot payments only: those kept past the window are the engine's to save and recall
    // (`Ledger::recall`), as history.db holds what they were.
    out.u64(ledger.payments.hot().count() as u64);
    for payment in ledger.payments.hot() {
        out.u64(payment.lsn);
        out.u32(payment.payer);
        out.u32(payment.settlement);
        out.i64(payment.amount);
        out.i64(payment.refunded);
        out.u32(payment.mandate.unwrap_or(NO_MANDATE));
    }
    out.seal()
}

fn encode_mandate(out: &mut Writer, mandate: &Mandate) {
    let terms = &mandate.terms;
    out.u64(mandate.lsn);
    out.u32(terms.payer);
    out.u32(terms.merchant);
    out.i64(terms.amount_max_per_payment);
    out.opt(terms.amount_max_per_day);
    out.opt(terms.expires_at_s);
    out.i64(terms.created_s);
    out.opt(mandate.revoked_s);
    out.i64(mandate.spent_day);
    out.i64(mandate.spent);
}

fn corrupt(reason: String) -> CoreError {
    CoreError::CorruptLedger(reason)
}

/// A ledger from `encode`'s bytes, every reference and its invariants checked.
///
/// # Errors
/// `CorruptLedger` for bytes `encode` did not write (or that were damaged since);
/// `InvariantBroken` for a state that breaks the ledger's invariants.
pub fn decode(data: &[u8]) -> CoreResult<Ledger> {
    let mut reader = Reader::open(data, *MAGIC, VERSION, corrupt)?;
    let mut ledger = Ledger::default();
    read_accounts(&mut reader, &mut ledger)?;
    read_mandates(&mut reader, &mut ledger)?;
    read_payments(&mut reader, &mut ledger)?;
    reader.finish("payments")?;
    ledger.check_invariants()?;
    Ok(ledger)
}

fn read_accounts(reader: &mut Reader<'_>, ledger: &mut Ledger) -> CoreResult<()> {
    let accounts = &mut ledger.accounts;
    for currency in 0..reader.u32()? {
        let name = reader.str()?;
        if accounts.intern_currency(name)? != currency {
            return Err(corrupt(format!("currency {name} is listed twice")));
        }
        accounts.set_net_inflow(currency, reader.i64()?);
    }
    let currencies = accounts.currencies().count();
    for _ in 0..reader.u32()? {
        let id = reader.str()?;
        let currency = reader.index("currency", currencies)?;
        let balance = reader.i64()?;
        let overdraft = reader.flag("overdraft")?;
        let owner = if reader.flag("owner")? {
            Owner::Merchant
        } else {
            Owner::Customer
        };
        let account = Account {
            currency,
            balance,
            overdraft,
            owner,
        };
        if accounts.restore(id, account)?.is_err() {
            return Err(corrupt(format!("account {id} is listed twice")));
        }
    }
    Ok(())
}

fn read_mandates(reader: &mut Reader<'_>, ledger: &mut Ledger) -> CoreResult<()> {
    let merchants = reader.u32()?;
    for merchant in 0..merchants {
        let name = reader.str()?;
        if ledger.mandates.intern_merchant(name)? != merchant {
            return Err(corrupt(format!("merchant {name} is listed twice")));
        }
    }
    let accounts = ledger.accounts.len();
    for _ in 0..reader.u32()? {
        let lsn = reader.u64()?;
        let terms = Terms {
            payer: reader.index("mandate payer", accounts)?,
            merchant: reader.index("mandate merchant", merchants as usize)?,
            amount_max_per_payment: reader.i64()?,
            amount_max_per_day: reader.opt()?,
            expires_at_s: reader.opt()?,
            created_s: reader.i64()?,
        };
        let mandate = Mandate {
            lsn,
            terms,
            revoked_s: reader.opt()?,
            spent_day: reader.i64()?,
            spent: reader.i64()?,
        };
        ledger
            .mandates
            .add(mandate)
            .map_err(|error| corrupt(error.to_string()))?;
    }
    Ok(())
}

fn read_payments(reader: &mut Reader<'_>, ledger: &mut Ledger) -> CoreResult<()> {
    let count = reader.u64()?;
    for _ in 0..count {
        let accounts = ledger.accounts.len();
        let payment = Payment {
            lsn: reader.u64()?,
            payer: reader.index("payer", accounts)?,
            settlement: reader.index("settlement account", accounts)?,
            amount: reader.i64()?,
            refunded: reader.i64()?,
            mandate: match reader.u32()? {
                NO_MANDATE => None,
                index if (index as usize) < ledger.mandates.len() => Some(index),
                index => return Err(corrupt(format!("payment mandate {index} is not held"))),
            },
        };
        push_payment(ledger, payment)?;
    }
    Ok(())
}

/// Appends a payment read from a snapshot: after every held one, between two accounts of one
/// currency, with an amount a payment can have.
pub(super) fn push_payment(ledger: &mut Ledger, payment: Payment) -> CoreResult<()> {
    let id = super::ledger::payment_id(payment.lsn);
    if ledger.payments.last().is_some_and(|last| last.lsn >= payment.lsn) {
        return Err(corrupt(format!("payment {id} is out of log order")));
    }
    let accounts = &ledger.accounts;
    if accounts.get(payment.payer).currency != accounts.get(payment.settlement).currency {
        return Err(corrupt(format!("payment {id} is between two currencies")));
    }
    if !(0..=BALANCE_MAX).contains(&payment.amount) {
        return Err(corrupt(format!("payment {id} has amount {}", payment.amount)));
    }
    ledger.payments.push(payment);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::codec::testing::{check_damage_refused, resealed};
    use crate::state::codec::CRC_LEN;
    use crate::state::ledger::tests::{grant, request, shop_ledger, NOW_S};
    use crate::state::ledger::Grant;

    /// alice and bob, a mandate each (bob's revoked, a second one for "other" with every
    /// limit), a payment before consent, two under alice's mandate, one partly refunded.
    fn busy_ledger() -> Ledger {
        let mut ledger = shop_ledger();
        ledger
            .open_account("bob", "EUR", true, Owner::Customer)
            .unwrap()
            .unwrap();
        ledger.grant_mandate(2, &grant("bob", 50)).unwrap();
        ledger.revoke_mandate(2, NOW_S).unwrap();
        let limited = Grant {
            merchant_id: "other",
            amount_max_per_day: Some(60),
            expires_at_s: Some(NOW_S + 99),
            ..grant("bob", 50)
        };
        ledger.grant_mandate(3, &limited).unwrap();
        ledger
            .pay_as_before_consent(&request(4, "alice", 10))
            .unwrap()
            .unwrap();
        for lsn in [5, 6] {
            ledger
                .pay(&request(lsn, "alice", 100), "shop", NOW_S)
                .unwrap()
                .unwrap();
        }
        ledger.refund(Some(5), Some(30)).unwrap().1.unwrap();
        ledger
    }

    #[test]
    fn a_snapshot_restores_the_same_ledger_and_the_same_bytes() {
        let ledger = busy_ledger();
        let encoded = encode(&ledger);
        let restored = decode(&encoded).unwrap();
        assert_eq!(restored, ledger);
        assert_eq!(encode(&restored), encoded);
        assert_eq!(restored.mandates.current(3, "shop"), None);
        assert_eq!(restored.mandates.current(3, "other"), Some(2));
        assert_eq!(decode(&encode(&Ledger::default())).unwrap(), Ledger::default());
    }

    #[test]
    fn a_damaged_snapshot_is_refused() {
        let encoded = encode(&busy_ledger());
        check_damage_refused(&encoded, decode, |error| {
            matches!(error, CoreError::CorruptLedger(_))
        });
        let mut longer = encoded.clone();
        longer.splice(encoded.len() - CRC_LEN..encoded.len() - CRC_LEN, [0]);
        assert!(matches!(
            decode(&resealed(longer)),
            Err(CoreError::CorruptLedger(_))
        ));
    }

    #[test]
    fn a_forged_payment_entry_is_caught_by_the_invariants() {
        // The last payment's mandate index is the row's last 4 bytes: point it at bob's mandate.
        let mut forged = encode(&busy_ledger());
        let at = forged.len() - CRC_LEN - 4;
        assert_eq!(forged[at..at + 4], 0u32.to_le_bytes());
        forged[at..at + 4].copy_from_slice(&1u32.to_le_bytes());
        let error = decode(&resealed(forged)).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("payment pay_6 debited alice without consent"),
            "{message}"
        );
        assert!(matches!(error, CoreError::InvariantBroken(_)));
    }

    #[test]
    fn a_payment_out_of_range_or_order_is_refused() {
        let mut ledger = busy_ledger();
        let last = ledger.payments.last().unwrap().clone();
        let early = Payment {
            lsn: 4,
            ..last.clone()
        };
        assert!(push_payment(&mut ledger, early).is_err());
        let negative = Payment {
            lsn: last.lsn + 1,
            amount: -1,
            ..last
        };
        let error = push_payment(&mut ledger, negative).unwrap_err().to_string();
        assert!(error.contains("has amount -1"), "{error}");
    }
}
