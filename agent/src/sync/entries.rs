//! The entries in force and the matching of a caller's selectors against
//! them: which identities a process gets, once the attestor has said what it is.

use std::collections::HashMap;
use std::sync::Arc;

use lanyard_proto::entry_claims::{ClaimsError, EntryClaims};
use lanyard_proto::{Selector, SpiffeId};

use crate::attestor::workload::Needs;

/// An entry as the agent serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AgentEntry {
    pub id: String,
    pub spiffe_id: SpiffeId,
    pub selectors: Vec<Selector>,
    /// Handed to workloads with each SVID of this entry.
    pub hint: String,
    /// Its own JWT claims, whose templates the server fills from the
    /// caller's selectors that [`AgentEntry::claim_inputs`] picks.
    pub claims: Option<Arc<EntryClaims>>,
}

impl AgentEntry {
    /// The selectors of `caller` this entry's claims use (none without
    /// claims), or which one the caller lacks.
    pub(crate) fn claim_inputs(&self, caller: &[Selector]) -> Result<Vec<Selector>, ClaimsError> {
        self.claims
            .as_ref()
            .map_or(Ok(Vec::new()), |claims| claims.inputs(caller))
    }

    /// An entry matches a caller when every one of its selectors is among the caller's.
    pub(crate) fn matches(&self, caller: &[Selector]) -> bool {
        self.selectors.iter().all(|s| caller.contains(s))
    }
}

/// The entries in force, indexed for matching, and what attesting a caller
/// against them takes. Replaced whole on every sync that changes entries.
#[derive(Debug, Default)]
pub(crate) struct EntrySet {
    entries: Vec<AgentEntry>,
    /// Entry positions by their first (smallest) selector: an entry can match
    /// only a caller that has that selector, so a caller's own selectors find
    /// every candidate without a scan of all entries.
    by_first_selector: HashMap<Selector, Vec<usize>>,
    /// Entries without selectors (they match every caller).
    unconditional: Vec<usize>,
    needs: Needs,
}

impl EntrySet {
    pub(crate) fn new(entries: Vec<AgentEntry>) -> Self {
        let mut by_first_selector: HashMap<Selector, Vec<usize>> = HashMap::new();
        let mut unconditional = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            match entry.selectors.iter().min() {
                Some(first) => by_first_selector.entry(first.clone()).or_default().push(i),
                None => unconditional.push(i),
            }
        }
        let mut needs = Needs::of(entries.iter().flat_map(|e| &e.selectors));
        // Claim templates need their kinds attested too, even where no
        // entry selects on them.
        for reference in entries
            .iter()
            .filter_map(|e| e.claims.as_deref())
            .flat_map(EntryClaims::references)
        {
            if let Some((kind, key)) = reference.selector_kind_and_key() {
                needs.add(kind, key);
            }
        }
        Self {
            entries,
            by_first_selector,
            unconditional,
            needs,
        }
    }

    pub(crate) fn entries(&self) -> &[AgentEntry] {
        &self.entries
    }

    /// The kinds of selectors these entries use.
    pub(crate) fn needs(&self) -> Needs {
        self.needs
    }

    /// The identities a caller with `selectors` may have, in entry order,
    /// one per SPIFFE ID.
    pub(crate) fn identities_for(&self, selectors: &[Selector]) -> Vec<AgentEntry> {
        let mut candidates: Vec<usize> = self.unconditional.clone();
        for selector in selectors {
            if let Some(positions) = self.by_first_selector.get(selector) {
                candidates.extend_from_slice(positions);
            }
        }
        candidates.sort_unstable();
        candidates.dedup();
        let mut found: Vec<AgentEntry> = Vec::new();
        for entry in candidates.into_iter().map(|i| &self.entries[i]) {
            if entry.matches(selectors) && !found.iter().any(|f| f.spiffe_id == entry.spiffe_id) {
                found.push(entry.clone());
            }
        }
        found
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An entry for tests, from strings that parse.
    pub(crate) fn entry(id: &str, spiffe_id: &str, selectors: &[&str]) -> AgentEntry {
        AgentEntry {
            id: id.to_owned(),
            spiffe_id: SpiffeId::parse(spiffe_id).unwrap(),
            selectors: selectors
                .iter()
                .map(|s| Selector::parse(s).unwrap())
                .collect(),
            hint: String::new(),
            claims: None,
        }
    }

    /// The index finds exactly what a scan of every entry would.
    #[test]
    fn indexed_matching_equals_a_scan() -> Result<(), Box<dyn std::error::Error>> {
        let entries = vec![
            entry("a", "spiffe://td/a", &["unix:uid:1", "unix:gid:5"]),
            entry("b", "spiffe://td/b", &["unix:uid:1"]),
            entry("c", "spiffe://td/a", &["unix:gid:5"]),
            entry("d", "spiffe://td/d", &["unix:uid:2"]),
            entry("e", "spiffe://td/e", &["unix:gid:5", "unix:user:x"]),
        ];
        let set = EntrySet::new(entries.clone());
        assert!(set.needs().names);
        let callers: Vec<Vec<Selector>> = [
            vec!["unix:uid:1", "unix:gid:5"],
            vec!["unix:uid:1"],
            vec!["unix:gid:5", "unix:user:x"],
            vec!["unix:uid:3"],
            vec![],
        ]
        .iter()
        .map(|c| c.iter().map(|s| Selector::parse(s)).collect())
        .collect::<Result<_, _>>()?;
        for caller in &callers {
            let mut scanned: Vec<AgentEntry> = Vec::new();
            for e in entries.iter().filter(|e| e.matches(caller)) {
                if !scanned.iter().any(|f| f.spiffe_id == e.spiffe_id) {
                    scanned.push(e.clone());
                }
            }
            assert_eq!(set.identities_for(caller), scanned, "{caller:?}");
        }
        let ids: Vec<String> = set
            .identities_for(&callers[0])
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(ids, ["a", "b"], "one per SPIFFE ID, first entry wins");
        Ok(())
    }
}
