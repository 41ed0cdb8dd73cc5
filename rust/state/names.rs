//! Interned names (account ids, currencies, merchant ids): each string once, referred to by a
//! `u32` index in the order it was first seen, so state that names them stays small and its
//! encoding is the same however the state was rebuilt.

use std::collections::HashMap;

use crate::error::{CoreError, CoreResult};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    names: Vec<Box<str>>,
    index: HashMap<Box<str>, u32>,
}

impl Names {
    #[must_use]
    pub fn get(&self, name: &str) -> Option<u32> {
        self.index.get(name).copied()
    }

    /// The index of `name`, interned now if it is new.
    ///
    /// # Errors
    /// More than `u32::MAX` names.
    pub fn intern(&mut self, name: &str) -> CoreResult<u32> {
        if let Some(id) = self.get(name) {
            return Ok(id);
        }
        let id = u32::try_from(self.names.len()).map_err(|_| CoreError::StateFull { what: "names" })?;
        self.names.push(name.into());
        self.index.insert(name.into(), id);
        Ok(id)
    }

    /// The name at `id`, which must have come from this table.
    #[must_use]
    pub fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.names.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(AsRef::as_ref)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_interned_once_in_first_seen_order() {
        let mut names = Names::default();
        assert_eq!(names.intern("EUR"), Ok(0));
        assert_eq!(names.intern("USD"), Ok(1));
        assert_eq!(names.intern("EUR"), Ok(0));
        assert_eq!(names.get("GBP"), None);
        assert_eq!(names.name(1), "USD");
        assert_eq!(names.iter().collect::<Vec<_>>(), ["EUR", "USD"]);
    }
}
