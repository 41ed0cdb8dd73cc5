//! Reading the ledger of an engine snapshot written before the ledger was native: a JSON object
//! of positional rows (`python/instapay/ledger.py` wrote it until issue 13). Rows written
//! before consent have no owner (the account is a customer's; the engine marks settlement
//! accounts from its merchants) and no mandate (the payment was logged before consent), and such
//! a snapshot holds no mandates.
//!
//! ```text
//! {"accounts": [[id, currency, overdraft, balance, owner?], ...],
//!  "payments": [["pay_<lsn>", payer, settlement, amount, currency, refunded, mandate?], ...],
//!  "net_inflow": {currency: deposits minus withdrawals, ...},
//!  "mandates": {"fields": [name, ...], "rows": [[value, ...], ...]} or absent}
//! ```

use serde_json::{Map, Value};

use super::accounts::Owner;
use super::ledger::Ledger;
use super::mandates::{Mandate, Terms};
use super::payments::Payment;
use super::snapshot::push_payment;
use super::{lsn_in_id, MANDATE_ID_PREFIX, PAYMENT_ID_PREFIX};
use crate::error::{CoreError, CoreResult};

fn corrupt(reason: impl Into<String>) -> CoreError {
    CoreError::CorruptLedger(reason.into())
}

/// A row's fields, read by position with the row named in every error.
struct Row<'a> {
    what: &'static str,
    fields: &'a [Value],
}

impl<'a> Row<'a> {
    fn new(what: &'static str, value: &'a Value, len_min: usize) -> CoreResult<Self> {
        match value.as_array() {
            Some(fields) if fields.len() >= len_min => Ok(Self { what, fields }),
            _ => Err(corrupt(format!("{what} row {value} is too short"))),
        }
    }

    fn wrong(&self, at: usize, expected: &str) -> CoreError {
        corrupt(format!("{} row field {at} is not {expected}", self.what))
    }

    fn str(&self, at: usize) -> CoreResult<&'a str> {
        self.fields[at].as_str().ok_or_else(|| self.wrong(at, "a string"))
    }

    fn int(&self, at: usize) -> CoreResult<i64> {
        self.fields[at]
            .as_i64()
            .ok_or_else(|| self.wrong(at, "an integer"))
    }

    fn opt_int(&self, at: usize) -> CoreResult<Option<i64>> {
        match &self.fields[at] {
            Value::Null => Ok(None),
            _ => self.int(at).map(Some),
        }
    }

    fn bool(&self, at: usize) -> CoreResult<bool> {
        self.fields[at]
            .as_bool()
            .ok_or_else(|| self.wrong(at, "a boolean"))
    }

    /// An optional trailing field: absent and null are None.
    fn trailing(&self, at: usize) -> Option<&'a Value> {
        self.fields.get(at).filter(|value| !value.is_null())
    }
}

fn list<'a>(state: &'a Map<String, Value>, name: &str) -> CoreResult<&'a [Value]> {
    state
        .get(name)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .ok_or_else(|| corrupt(format!("the ledger has no list {name}")))
}

/// A ledger from the JSON of a snapshot written before the ledger was native, checked as
/// `snapshot::decode` checks its own.
///
/// # Errors
/// `CorruptLedger` for JSON that is not such a ledger; `InvariantBroken` for a state that
/// breaks the ledger's invariants.
pub fn decode(json: &[u8]) -> CoreResult<Ledger> {
    let value: Value = serde_json::from_slice(json).map_err(|error| corrupt(error.to_string()))?;
    let state = value
        .as_object()
        .ok_or_else(|| corrupt("the ledger is not an object"))?;
    let mut ledger = Ledger::default();
    read_accounts(&mut ledger, list(state, "accounts")?)?;
    read_net_inflow(&mut ledger, state.get("net_inflow"))?;
    if let Some(mandates) = state.get("mandates").filter(|value| !value.is_null()) {
        read_mandates(&mut ledger, mandates)?;
    }
    for row in list(state, "payments")? {
        read_payment(&mut ledger, &Row::new("payment", row, 6)?)?;
    }
    ledger.check_invariants()?;
    Ok(ledger)
}

fn read_accounts(ledger: &mut Ledger, rows: &[Value]) -> CoreResult<()> {
    for row in rows {
        let row = Row::new("account", row, 4)?;
        let id = row.str(0)?;
        let owner = match row.trailing(4) {
            None => Owner::Customer,
            Some(owner) => Owner::from_name(owner.as_str().ok_or_else(|| row.wrong(4, "a name"))?)?,
        };
        // A null overdraft is none (an admin request could send `"overdraft": null`).
        let overdraft = !row.fields[2].is_null() && row.bool(2)?;
        if ledger.open_account(id, row.str(1)?, overdraft, owner)?.is_err() {
            return Err(corrupt(format!("account {id} is listed twice")));
        }
        let index = ledger.accounts.find(id).expect("just opened");
        ledger.accounts.get_mut(index).balance = row.int(3)?;
    }
    Ok(())
}

/// The net inflows, for exactly the currencies of the accounts (the old ledger kept one per
/// currency an account was opened in).
fn read_net_inflow(ledger: &mut Ledger, net_inflow: Option<&Value>) -> CoreResult<()> {
    let net_inflow = net_inflow
        .and_then(Value::as_object)
        .ok_or_else(|| corrupt("the ledger has no net_inflow object"))?;
    let currencies: Vec<String> = ledger
        .accounts
        .currencies()
        .map(|(name, _)| name.to_owned())
        .collect();
    if net_inflow.len() != currencies.len() {
        return Err(corrupt("net_inflow does not list the accounts' currencies"));
    }
    for (currency, name) in currencies.iter().enumerate() {
        let inflow = net_inflow.get(name).and_then(Value::as_i64);
        let inflow = inflow.ok_or_else(|| corrupt(format!("no integer net inflow of {name}")))?;
        let currency = u32::try_from(currency).expect("currencies are u32 indexes");
        ledger.accounts.set_net_inflow(currency, inflow);
    }
    Ok(())
}

/// The fields of a mandate row, as `mandates.py` named them in the header.
const MANDATE_FIELDS: [&str; 10] = [
    "id",
    "account_id",
    "merchant_id",
    "amount_max_per_payment",
    "amount_max_per_day",
    "expires_at_s",
    "created_s",
    "revoked_s",
    "spent_day",
    "spent",
];

/// The mandate rows, read by the names of their header (`mandates.py` wrote them so).
fn read_mandates(ledger: &mut Ledger, mandates: &Value) -> CoreResult<()> {
    let header = mandates.get("fields").and_then(Value::as_array);
    let header = header.ok_or_else(|| corrupt("the mandates have no header"))?;
    let mut at = [0; MANDATE_FIELDS.len()];
    for (slot, name) in at.iter_mut().zip(MANDATE_FIELDS) {
        *slot = header
            .iter()
            .position(|field| field.as_str() == Some(name))
            .ok_or_else(|| corrupt(format!("the mandates have no field {name}")))?;
    }
    let [id, account, merchant, per_payment, per_day, expires, created, revoked, day, spent] = at;
    let rows = mandates.get("rows").and_then(Value::as_array);
    for row in rows.ok_or_else(|| corrupt("the mandates have no rows"))? {
        let row = Row::new("mandate", row, header.len())?;
        let mandate_id = row.str(id)?;
        let lsn = lsn_in_id(mandate_id, MANDATE_ID_PREFIX)
            .ok_or_else(|| corrupt(format!("{mandate_id} is not a mandate id")))?;
        let account_id = row.str(account)?;
        let terms = Terms {
            payer: ledger
                .accounts
                .find(account_id)
                .ok_or_else(|| corrupt(format!("mandate {mandate_id} of unknown account {account_id}")))?,
            merchant: ledger.mandates.intern_merchant(row.str(merchant)?)?,
            amount_max_per_payment: row.int(per_payment)?,
            amount_max_per_day: row.opt_int(per_day)?,
            expires_at_s: row.opt_int(expires)?,
            created_s: row.int(created)?,
        };
        let mandate = Mandate {
            lsn,
            terms,
            revoked_s: row.opt_int(revoked)?,
            spent_day: row.int(day)?,
            spent: row.int(spent)?,
        };
        ledger
            .mandates
            .add(mandate)
            .map_err(|error| corrupt(error.to_string()))?;
    }
    Ok(())
}

fn read_payment(ledger: &mut Ledger, row: &Row<'_>) -> CoreResult<()> {
    let id = row.str(0)?;
    let lsn = lsn_in_id(id, PAYMENT_ID_PREFIX).ok_or_else(|| corrupt(format!("{id} is not a payment id")))?;
    let account = |at: usize| -> CoreResult<u32> {
        let name = row.str(at)?;
        ledger
            .accounts
            .find(name)
            .ok_or_else(|| corrupt(format!("payment {id} names unknown account {name}")))
    };
    let (payer, settlement) = (account(1)?, account(2)?);
    if ledger.accounts.currency_of(payer) != row.str(4)? {
        return Err(corrupt(format!("payment {id} is not in its payer's currency")));
    }
    let mandate = match row.trailing(6) {
        None => None,
        Some(mandate) => {
            let mandate = mandate.as_str().ok_or_else(|| row.wrong(6, "a mandate id"))?;
            let found = lsn_in_id(mandate, MANDATE_ID_PREFIX).and_then(|lsn| ledger.mandates.find(lsn));
            Some(found.ok_or_else(|| corrupt(format!("payment {id} names unknown mandate {mandate}")))?)
        }
    };
    let payment = Payment {
        lsn,
        amount: row.int(3)?,
        refunded: row.int(5)?,
        payer,
        settlement,
        mandate,
    };
    push_payment(ledger, payment)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_from_before_consent_loads() {
        let json = br#"{"accounts": [["alice", "EUR", null, 600], ["shop", "EUR", false, 400]],
            "payments": [["pay_1", "alice", "shop", 400, "EUR", 0]], "net_inflow": {"EUR": 1000}}"#;
        let ledger = decode(json).unwrap();
        assert_eq!(ledger.accounts.get(1).owner, Owner::Customer);
        assert!(!ledger.accounts.get(0).overdraft);
        assert_eq!(ledger.payment(1).unwrap().mandate, None);
        assert!(ledger.mandates.is_empty());
    }

    #[test]
    fn a_ledger_that_breaks_an_invariant_is_refused() {
        let json = br#"{"accounts": [["alice", "EUR", false, 600]], "payments": [],
            "net_inflow": {"EUR": 1000}}"#;
        assert!(matches!(decode(json), Err(CoreError::InvariantBroken(_))));
        let json = br#"{"accounts": [["alice", "EUR", false, 0]], "payments": [],
            "net_inflow": {"USD": 0}}"#;
        assert!(matches!(decode(json), Err(CoreError::CorruptLedger(_))));
    }
}
