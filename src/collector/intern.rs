//! A per-run dictionary of label values read from the database.

use std::collections::HashMap;

/// Maps each distinct string to a dense id, so that per-value tallies live in
/// flat arrays and a repeated value costs a hash lookup, not an allocation.
///
/// At 1M follow-ups the engagement and adoption collectors read 34k–41k rows
/// per run with three and one string columns; decoding them as borrowed
/// `&str` into this dictionary instead of one `String` each, and hashing
/// with foldhash instead of SipHash, is part of what brought their runs
/// down (BENCHMARKS.md, "Collector at database scale").
#[derive(Debug, Default)]
pub(crate) struct Interner {
    ids: HashMap<Box<str>, usize, foldhash::fast::RandomState>,
    names: Vec<Box<str>>,
}

impl Interner {
    /// The id of `value`, added if new.
    pub(crate) fn id(&mut self, value: &str) -> usize {
        if let Some(&id) = self.ids.get(value) {
            return id;
        }
        let id = self.names.len();
        self.names.push(value.into());
        self.ids.insert(value.into(), id);
        id
    }

    /// The string of `id`.
    pub(crate) fn name(&self, id: usize) -> &str {
        self.names.get(id).map_or("", |s| s)
    }

    /// Number of distinct values.
    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_strings_share_an_id() {
        let mut d = Interner::default();
        let a = d.id("acme");
        let b = d.id("globex");
        assert_eq!(d.id("acme"), a);
        assert_ne!(a, b);
        assert_eq!(d.len(), 2);
        assert_eq!(d.name(b), "globex");
    }
}
