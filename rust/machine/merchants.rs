//! The merchants the batch stage needs, natively: each merchant's id and settlement account, and
//! which merchant each signing key id (kid) belongs to. `python/instapay/merchants.py` keeps it
//! in step with its `Merchants` on every change (`put`), as it keeps the key ring.

use std::collections::HashMap;

/// A merchant as the hot path sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merchant {
    pub id: String,
    pub settlement_account: String,
    kids: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Merchants {
    entries: Vec<Merchant>,
    by_id: HashMap<String, usize>,
    by_kid: HashMap<String, usize>,
}

impl Merchants {
    /// Adds a merchant, or replaces one with its current keys (a kid it no longer has stops
    /// naming it). The caller checked that no kid belongs to another merchant.
    pub fn put(&mut self, id: &str, settlement_account: &str, kids: &[String]) {
        let at = if let Some(&at) = self.by_id.get(id) {
            for kid in &self.entries[at].kids {
                self.by_kid.remove(kid);
            }
            at
        } else {
            self.entries.push(Merchant {
                id: id.to_owned(),
                settlement_account: String::new(),
                kids: Vec::new(),
            });
            self.by_id.insert(id.to_owned(), self.entries.len() - 1);
            self.entries.len() - 1
        };
        for kid in kids {
            let previous = self.by_kid.insert(kid.clone(), at);
            assert!(
                previous.is_none_or(|owner| owner == at),
                "kid {kid} names two merchants"
            );
        }
        let merchant = &mut self.entries[at];
        settlement_account.clone_into(&mut merchant.settlement_account);
        merchant.kids = kids.to_vec();
    }

    #[must_use]
    pub fn by_kid(&self, kid: &str) -> Option<&Merchant> {
        self.by_kid.get(kid).map(|&at| &self.entries[at])
    }

    #[must_use]
    pub fn by_id(&self, id: &str) -> Option<&Merchant> {
        self.by_id.get(id).map(|&at| &self.entries[at])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kids(names: &[&str]) -> Vec<String> {
        names.iter().map(|&name| name.to_owned()).collect()
    }

    #[test]
    fn a_replaced_merchant_keeps_only_its_current_kids() {
        let mut merchants = Merchants::default();
        merchants.put("m1", "settle-1", &kids(&["k1", "k2"]));
        merchants.put("m2", "settle-2", &kids(&["k3"]));
        assert_eq!(merchants.by_kid("k2").map(|m| m.id.as_str()), Some("m1"));
        merchants.put("m1", "settle-1", &kids(&["k1", "k4"]));
        assert!(
            merchants.by_kid("k2").is_none(),
            "a revoked kid names no merchant"
        );
        assert_eq!(merchants.by_kid("k4").map(|m| m.id.as_str()), Some("m1"));
        assert_eq!(merchants.by_kid("k3").map(|m| m.id.as_str()), Some("m2"));
        assert_eq!(
            merchants.by_id("m2").map(|m| m.settlement_account.as_str()),
            Some("settle-2")
        );
    }
}
