//! Errors returned while validating a render context or rendering a template.

use std::fmt;

/// One problem found in a render context: the field path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextProblem {
    /// Dotted path of the offending field, e.g. `load_balancer.priority`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub problem: String,
}

impl fmt::Display for ContextProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

/// Renders a list of problems as an indented bullet list for error messages.
fn bullet_list(problems: &[ContextProblem]) -> String {
    problems
        .iter()
        .map(|problem| format!("\n  - {problem}"))
        .collect()
}

/// Everything that can go wrong while rendering host files.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// A template was asked for by a name that is not embedded in this binary.
    #[error("unknown template {name:?}; available templates: {}", available.join(", "))]
    UnknownTemplate {
        /// The name that was asked for.
        name: String,
        /// Names of all embedded templates.
        available: Vec<&'static str>,
    },

    /// The render context is inconsistent or out of range; nothing was rendered.
    #[error(
        "invalid render context for host {host:?} ({} problem(s)); fix these values in the inventory:{}",
        problems.len(),
        bullet_list(problems)
    )]
    InvalidContext {
        /// Name of the host whose context was checked.
        host: String,
        /// Every problem found, in field order.
        problems: Vec<ContextProblem>,
    },

    /// The template refers to a value that the context does not provide (strict undefined).
    #[error(
        "template {template} (line {line}) uses `{variable}`, which the render context does not \
         define; add it to the context"
    )]
    UndefinedVariable {
        /// Template name.
        template: String,
        /// Dotted path of the missing value, e.g. `node.ip`.
        variable: String,
        /// 1-based line in the template, 0 when unknown.
        line: usize,
        /// The underlying template engine error.
        #[source]
        source: minijinja::Error,
    },

    /// Any other failure while compiling or rendering a template.
    #[error("rendering template {template} failed (line {line}): {message}")]
    Render {
        /// Template name.
        template: String,
        /// 1-based line in the template, 0 when unknown.
        line: usize,
        /// Engine message, including its detail.
        message: String,
        /// The underlying template engine error.
        #[source]
        source: minijinja::Error,
    },

    /// A file was asked for on a host that does not have the role it belongs to.
    #[error(
        "{file} is not rendered for host {host:?}: it needs the {role} role; set `{section}` in \
         the render context or do not ask for this file"
    )]
    RoleNotAssigned {
        /// Name of the host.
        host: String,
        /// Absolute path of the file that was asked for.
        file: &'static str,
        /// Role the file belongs to, e.g. `control-plane`.
        role: &'static str,
        /// Context section that assigns the role, e.g. `control_plane`.
        section: &'static str,
    },

    /// The context could not be converted into template values.
    #[error("cannot convert the render context for template {template}: {message}")]
    Context {
        /// Template name.
        template: String,
        /// Why serialization failed.
        message: String,
    },

    /// A rendered file failed its own syntax check (a bug in a template).
    #[error("rendered {template} is not valid {format}: {message}")]
    InvalidOutput {
        /// Template name.
        template: String,
        /// Expected format, e.g. `JSON`.
        format: &'static str,
        /// Parser message.
        message: String,
    },
}

impl TemplateError {
    /// Converts a minijinja error raised while handling `template` into a [`TemplateError`],
    /// naming the missing variable for undefined-value errors.
    pub(crate) fn from_engine(template: &str, source_text: &str, err: minijinja::Error) -> Self {
        let line = err.line().unwrap_or(0);
        if err.kind() == minijinja::ErrorKind::UndefinedError {
            let variable = undefined_variable_name(&err, source_text)
                .unwrap_or_else(|| "<unknown expression>".to_string());
            return TemplateError::UndefinedVariable {
                template: template.to_string(),
                variable,
                line,
                source: err,
            };
        }
        let message = match err.detail() {
            Some(detail) => format!("{}: {detail}", err.kind()),
            None => err.kind().to_string(),
        };
        TemplateError::Render {
            template: template.to_string(),
            line,
            message,
            source: err,
        }
    }
}

/// Extracts the undefined expression from an engine error: the engine's detail reads
/// "`node.ip` is undefined"; without it, fall back to the source span of the error.
fn undefined_variable_name(err: &minijinja::Error, source_text: &str) -> Option<String> {
    if let Some(detail) = err.detail() {
        let mut parts = detail.split('`');
        if let (Some(_), Some(name)) = (parts.next(), parts.next()) {
            if !name.is_empty() {
                return Some(name.to_string());
            }
        }
    }
    err.range()
        .and_then(|range| source_text.get(range))
        .map(|text| text.trim().to_string())
        .filter(|text| !text.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_context_lists_every_problem() {
        let err = TemplateError::InvalidContext {
            host: "cp-1".into(),
            problems: vec![
                ContextProblem {
                    field: "load_balancer.priority".into(),
                    problem: "must be 1..=254".into(),
                },
                ContextProblem {
                    field: "node.name".into(),
                    problem: "must not be empty".into(),
                },
            ],
        };
        let text = err.to_string();
        assert!(text.contains("\"cp-1\" (2 problem(s))"), "{text}");
        assert!(
            text.contains("\n  - load_balancer.priority: must be 1..=254"),
            "{text}"
        );
        assert!(
            text.contains("\n  - node.name: must not be empty"),
            "{text}"
        );
    }

    #[test]
    fn unknown_template_lists_available_names() {
        let err = TemplateError::UnknownTemplate {
            name: "nope".into(),
            available: vec!["a.j2", "b.j2"],
        };
        assert_eq!(
            err.to_string(),
            "unknown template \"nope\"; available templates: a.j2, b.j2"
        );
    }
}
