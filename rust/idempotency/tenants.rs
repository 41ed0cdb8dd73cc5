//! Per-tenant shares of the index, so that one merchant cannot deny service to another.
//!
//! Without shares the first merchant to fill the index (its declined payments are kept 24 h like
//! any result) gets every other merchant `Overloaded`. With them each tenant has a share of
//! `keys_max` keys, finished and in flight: `share_percent` of the capacity, but never fewer than
//! `TENANT_KEYS_MIN` (nor more than the capacity), so a small index still leaves a merchant room
//! to work. Shares are work-conserving: a tenant within its share is admitted whenever the index
//! has room, and one at or over it may borrow what the others leave unused as long as a whole
//! share stays free afterwards. A lone merchant (a demo, a load test) can thus use
//! `capacity - keys_max` keys, and one tenant always leaves the others `keys_max` keys. Two
//! tenants together can fill the index, though: one borrowing all but a share, the other taking
//! that share within its own (strict shares took `1 / share` tenants). When `keys_max` is the
//! whole capacity there is nothing to borrow.
//!
//! Tenants are named by the caller (the engine passes merchant ids) and numbered here, in the
//! order they are first seen; the numbers are what an entry stores (4 bytes) and what a dump
//! keeps with the names, so a loaded index counts the same keys for the same tenant. Tenant 0
//! is "no tenant": keys reserved without a name, and those of dumps from before tenants, which
//! only the overall capacity bounds.

use std::collections::HashMap;

use crate::body::ID_LEN_MAX;
use crate::error::{CoreError, CoreResult};

pub type TenantId = u32;
pub const NO_TENANT: TenantId = 0;
/// The share a tenant gets unless the caller chooses another.
pub const TENANT_SHARE_PERCENT_DEFAULT: u64 = 25;
/// The floor of a share, in keys.
pub const TENANT_KEYS_MIN: usize = 1000;

pub struct Tenants {
    ids: HashMap<Box<[u8]>, TenantId>,
    /// Names by id; `names[0]` is the empty name of `NO_TENANT`.
    names: Vec<Box<[u8]>>,
    /// Keys held, by id.
    keys: Vec<usize>,
    share_percent: u64,
    keys_max: usize,
    capacity_max: usize,
}

/// `share_percent` of `capacity_max`, within `TENANT_KEYS_MIN..=capacity_max`.
pub fn keys_max(capacity_max: usize, share_percent: u64) -> usize {
    let share = u128::from(share_percent) * capacity_max as u128 / 100;
    usize::try_from(share)
        .expect("a share is at most the capacity")
        .clamp(TENANT_KEYS_MIN.min(capacity_max), capacity_max)
}

impl Tenants {
    /// # Errors
    /// `OutOfRange` for a share outside 1..=100 percent.
    pub fn new(capacity_max: usize, share_percent: u64) -> CoreResult<Self> {
        if !(1..=100).contains(&share_percent) {
            return Err(CoreError::OutOfRange {
                what: "tenant_share_percent",
                value: share_percent,
                min: 1,
                max: 100,
            });
        }
        Ok(Self {
            ids: HashMap::new(),
            names: vec![Box::default()],
            keys: vec![0],
            share_percent,
            keys_max: keys_max(capacity_max, share_percent),
            capacity_max,
        })
    }

    pub fn share_percent(&self) -> u64 {
        self.share_percent
    }

    pub fn keys_max(&self) -> usize {
        self.keys_max
    }

    /// The id of tenant `name`, numbered now if it is new.
    ///
    /// # Errors
    /// `TenantName` for a name outside 1..=255 bytes (merchant ids are at most that).
    pub fn intern(&mut self, index: usize, name: &[u8]) -> CoreResult<TenantId> {
        if name.is_empty() || name.len() > ID_LEN_MAX {
            return Err(CoreError::TenantName {
                index,
                len: name.len(),
            });
        }
        if let Some(&id) = self.ids.get(name) {
            return Ok(id);
        }
        let id = TenantId::try_from(self.names.len()).expect("fewer tenants than u32 ids");
        self.ids.insert(name.into(), id);
        self.names.push(name.into());
        self.keys.push(0);
        Ok(id)
    }

    /// The id of a known tenant, without numbering a new one.
    pub fn id_of(&self, name: &[u8]) -> Option<TenantId> {
        self.ids.get(name).copied()
    }

    /// Tenant names in id order from id 1 (what a dump keeps).
    pub fn names(&self) -> impl ExactSizeIterator<Item = &[u8]> {
        self.names[1..].iter().map(AsRef::as_ref)
    }

    pub fn is_known(&self, tenant: TenantId) -> bool {
        (tenant as usize) < self.names.len()
    }

    pub fn keys_of(&self, tenant: TenantId) -> usize {
        self.keys[tenant as usize]
    }

    /// Whether `tenant`'s share lets it take one more key while the index holds `len` keys (the
    /// capacity itself is checked apart: a full index is `Full`, not a tenant's share): within
    /// its share always, at or over it only if `keys_max` keys stay free afterwards, the room a
    /// tenant within its share may still need.
    pub fn admits(&self, tenant: TenantId, len: usize) -> bool {
        tenant == NO_TENANT
            || self.keys_of(tenant) < self.keys_max
            || len + 1 + self.keys_max <= self.capacity_max
    }

    pub fn add(&mut self, tenant: TenantId) {
        self.keys[tenant as usize] += 1;
    }

    pub fn remove(&mut self, tenant: TenantId) {
        let keys = &mut self.keys[tenant as usize];
        *keys = keys
            .checked_sub(1)
            .expect("a tenant never holds fewer than 0 keys");
    }

    /// Every key of the index, counted once by its tenant.
    pub fn total(&self) -> usize {
        self.keys.iter().sum()
    }

    pub fn allocated_bytes(&self) -> usize {
        let names: usize = self.names.iter().map(|name| 2 * name.len()).sum();
        names
            + self.names.capacity() * size_of::<Box<[u8]>>()
            + self.keys.capacity() * size_of::<usize>()
            + self.ids.capacity() * (size_of::<Box<[u8]>>() + size_of::<TenantId>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_is_its_percentage_of_the_capacity_with_a_floor() {
        assert_eq!(keys_max(1_000_000, 25), 250_000);
        assert_eq!(keys_max(1_000_000, 100), 1_000_000);
        assert_eq!(keys_max(2_000, 25), TENANT_KEYS_MIN);
        assert_eq!(keys_max(10, 25), 10, "never more than the capacity");
    }

    #[test]
    fn names_are_numbered_once_in_the_order_they_come() {
        let mut tenants = Tenants::new(10, 50).expect("valid share");
        assert_eq!(tenants.intern(0, b"shop"), Ok(1));
        assert_eq!(tenants.intern(1, b"cafe"), Ok(2));
        assert_eq!(tenants.intern(2, b"shop"), Ok(1));
        assert_eq!(tenants.names().collect::<Vec<_>>(), [&b"shop"[..], b"cafe"]);
        assert_eq!(
            tenants.intern(3, b""),
            Err(CoreError::TenantName { index: 3, len: 0 })
        );
        assert!(tenants.intern(4, &[b'x'; ID_LEN_MAX + 1]).is_err());
    }

    #[test]
    fn a_tenant_at_its_share_is_not_admitted_when_its_share_is_the_capacity() {
        let mut tenants = Tenants::new(4, 50).expect("valid share");
        assert_eq!(tenants.keys_max(), 4, "the floor, capped by the capacity");
        let shop = tenants.intern(0, b"shop").expect("valid name");
        for len in 0..4 {
            assert!(tenants.admits(shop, len));
            tenants.add(shop);
        }
        assert!(!tenants.admits(shop, 4), "nothing to borrow");
        assert!(
            tenants.admits(NO_TENANT, 4),
            "no tenant: the capacity alone bounds it"
        );
        tenants.remove(shop);
        assert!(tenants.admits(shop, 3));
        assert_eq!(tenants.total(), 3);
    }

    #[test]
    fn a_tenant_at_its_share_borrows_while_a_whole_share_stays_free() {
        let capacity = 4 * TENANT_KEYS_MIN;
        let mut tenants = Tenants::new(capacity, 25).expect("valid share");
        let shop = tenants.intern(0, b"shop").expect("valid name");
        for _ in 0..TENANT_KEYS_MIN {
            tenants.add(shop);
        }
        let borrowed_max = capacity - TENANT_KEYS_MIN;
        assert!(
            tenants.admits(shop, borrowed_max - 1),
            "the last key it may borrow"
        );
        assert!(
            !tenants.admits(shop, borrowed_max),
            "one more would leave less than a share free"
        );
        let cafe = tenants.intern(1, b"cafe").expect("valid name");
        assert!(tenants.admits(cafe, borrowed_max), "within its share");
    }

    #[test]
    fn shares_outside_one_to_a_hundred_percent_are_refused() {
        assert!(Tenants::new(10, 0).is_err());
        assert!(Tenants::new(10, 101).is_err());
    }
}
