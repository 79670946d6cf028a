//! The docs stay true: every counter reason and every CLI command is
//! documented, word for word where the code has the words.
use std::fmt::Write as _;

use clap::CommandFactory as _;
use pod_net::cli::Cli;
use pod_net_common::Reason;

const README: &str = include_str!("../../README.md");
/// Where the table of counter reasons lives.
const OBSERVABILITY: &str = include_str!("../../docs/observability.md");
/// Where the table of commands and flags lives.
const CLI: &str = include_str!("../../docs/cli.md");

/// The reason table of `docs/observability.md` is `reason.rs`'s, row for
/// row and word for word: one source for names and descriptions.
#[test]
fn reason_table_is_reason_rs() {
    let mut table = String::from("| reason | meaning |\n|---|---|\n");
    for reason in Reason::ALL {
        let _ = writeln!(table, "| `{}` | {} |", reason.name(), reason.help().trim());
    }
    assert!(
        OBSERVABILITY.contains(&table),
        "docs/observability.md's reason table differs from reason.rs; it should read:\n{table}"
    );
}

#[test]
fn readme_shows_the_two_commands() {
    assert!(README.contains("cargo xtask demo"));
    assert!(README.contains("cargo xtask test"));
}

#[test]
fn cli_table_has_every_cli_command() {
    let cli = Cli::command();
    for command in cli
        .get_subcommands()
        .filter(|command| command.get_name() != "help")
    {
        let nested: Vec<_> = command
            .get_subcommands()
            .filter(|sub| sub.get_name() != "help")
            .collect();
        if nested.is_empty() {
            let needle = format!("| `{}", command.get_name());
            assert!(
                CLI.contains(&needle),
                "docs/cli.md's CLI table lacks {needle}"
            );
        }
        for sub in nested {
            let needle = format!("| `{} {}", command.get_name(), sub.get_name());
            assert!(
                CLI.contains(&needle),
                "docs/cli.md's CLI table lacks {needle}"
            );
        }
    }
}
