//! Problems found while loading or validating an inventory.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One thing wrong with an inventory: where it is, what is wrong and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Field path such as `spec.hosts[2].address`; empty when the problem concerns the whole file.
    pub path: String,
    /// 1-based line of the field in the source file, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub hint: String,
}

impl Problem {
    /// Prints the problem prefixed with the file it was found in:
    /// `inventory.yaml:14: spec.cluster.podCIDR: … — hint`.
    pub fn display_in<'a>(&'a self, source_name: &'a str) -> impl fmt::Display + 'a {
        ProblemIn {
            problem: self,
            source_name,
        }
    }
}

struct ProblemIn<'a> {
    problem: &'a Problem,
    source_name: &'a str,
}

impl fmt::Display for ProblemIn<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.source_name)?;
        if let Some(line) = self.problem.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": {}", self.problem)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)?;
        if !self.hint.is_empty() {
            write!(f, " — {}", self.hint)?;
        }
        Ok(())
    }
}

/// Every problem found in one inventory source. Display prints one problem per line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{}", render_problems(.source_name, .problems))]
pub struct InventoryError {
    /// The file (or other source) the inventory came from.
    pub source_name: String,
    /// All problems found, in file order where lines are known.
    pub problems: Vec<Problem>,
}

impl InventoryError {
    /// An error with a single problem.
    pub fn single(
        source_name: &str,
        path: impl Into<String>,
        line: Option<usize>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        InventoryError {
            source_name: source_name.to_string(),
            problems: vec![Problem {
                path: path.into(),
                line,
                message: message.into(),
                hint: hint.into(),
            }],
        }
    }
}

fn render_problems(source_name: &str, problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| p.display_in(source_name).to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_prints_one_problem_per_line_with_file_and_line() {
        let err = InventoryError {
            source_name: "inventory.yaml".into(),
            problems: vec![
                Problem {
                    path: "spec.cluster.podCIDR".into(),
                    line: Some(14),
                    message: "10.96.0.0/16 overlaps serviceCIDR 10.96.0.0/12".into(),
                    hint: "choose disjoint ranges".into(),
                },
                Problem {
                    path: "spec.hosts".into(),
                    line: None,
                    message: "no host has the control-plane role".into(),
                    hint: "add `control-plane` to one host's roles".into(),
                },
            ],
        };
        assert_eq!(
            err.to_string(),
            "inventory.yaml:14: spec.cluster.podCIDR: 10.96.0.0/16 overlaps serviceCIDR 10.96.0.0/12 — choose disjoint ranges\n\
             inventory.yaml: spec.hosts: no host has the control-plane role — add `control-plane` to one host's roles"
        );
    }
}
