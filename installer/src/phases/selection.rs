//! Which phases a run executes: all of them, `--only` some, or all but `--skip-phases` (the
//! flag name kubeadm uses). Names are checked against the phases that exist.

use std::collections::BTreeSet;

use super::{names, PhaseName};

/// The phases a run executes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PhaseSelection {
    /// `Some`: only these; `None`: every phase.
    only: Option<BTreeSet<PhaseName>>,
    /// Never these (applied after `only`).
    skip: BTreeSet<PhaseName>,
}

/// A selection that names no existing phase, or leaves nothing to run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectionError {
    /// A name that is no phase.
    #[error("{flag} {name}: no such phase; the phases are {valid}")]
    Unknown {
        /// The flag it was given to.
        flag: &'static str,
        /// The name given.
        name: String,
        /// Every phase name, comma-separated.
        valid: String,
    },
    /// `--only` and `--skip-phases` together leave no phase.
    #[error("--only {only} with --skip-phases {skip} leaves no phase to run")]
    Empty {
        /// What `--only` named.
        only: String,
        /// What `--skip-phases` named.
        skip: String,
    },
}

fn lookup(flag: &'static str, given: &[String]) -> Result<BTreeSet<PhaseName>, SelectionError> {
    let all = names();
    given
        .iter()
        .map(|name| {
            let wanted = name.trim();
            all.iter()
                .copied()
                .find(|n| n.as_str() == wanted)
                .ok_or_else(|| SelectionError::Unknown {
                    flag,
                    name: name.clone(),
                    valid: all
                        .iter()
                        .map(|n| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                })
        })
        .collect()
}

impl PhaseSelection {
    /// Every phase.
    pub fn all() -> Self {
        PhaseSelection::default()
    }

    /// From the names given to `--only` (empty: every phase) and `--skip-phases`.
    pub fn new(only: &[String], skip: &[String]) -> Result<Self, SelectionError> {
        let selection = PhaseSelection {
            only: if only.is_empty() {
                None
            } else {
                Some(lookup("--only", only)?)
            },
            skip: lookup("--skip-phases", skip)?,
        };
        if !names().into_iter().any(|n| selection.includes(n)) {
            return Err(SelectionError::Empty {
                only: only.join(","),
                skip: skip.join(","),
            });
        }
        Ok(selection)
    }

    /// Whether `phase` runs.
    pub fn includes(&self, phase: PhaseName) -> bool {
        self.only.as_ref().is_none_or(|only| only.contains(&phase)) && !self.skip.contains(&phase)
    }

    /// Whether every phase runs.
    pub fn is_all(&self) -> bool {
        self.only.is_none() && self.skip.is_empty()
    }
}
