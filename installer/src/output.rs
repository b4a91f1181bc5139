//! Output formats shared by commands that print results (`-o table|json|yaml`).

use clap::ValueEnum;
use serde::Serialize;

/// How a command prints its result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// A human-readable table.
    #[default]
    Table,
    /// JSON, for automation.
    Json,
    /// YAML.
    Yaml,
}

/// Prints `value` on stdout: as JSON or YAML, or through `table` for humans.
pub fn emit<T: Serialize>(
    value: &T,
    format: OutputFormat,
    table: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(value)?),
        OutputFormat::Yaml => print!("{}", serde_yaml::to_string(value)?),
        OutputFormat::Table => println!("{}", table(value)),
    }
    Ok(())
}
