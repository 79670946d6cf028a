//! The README stays true: every counter reason and every CLI command is
//! documented.
use std::fmt::Write as _;

use clap::CommandFactory as _;
use pod_net::cli::Cli;
use pod_net_common::Reason;

const README: &str = include_str!("../../README.md");

/// The README's reason table is `reason.rs`'s, row for row and word for
/// word: one source for names and descriptions.
#[test]
fn readme_reason_table_is_reason_rs() {
    let mut table = String::from("| reason | meaning |\n|---|---|\n");
    for reason in Reason::ALL {
        let _ = writeln!(table, "| `{}` | {} |", reason.name(), reason.help().trim());
    }
    assert!(
        README.contains(&table),
        "README's reason table differs from reason.rs; it should read:\n{table}"
    );
}

#[test]
fn readme_shows_the_two_commands_and_every_cli_command() {
    assert!(README.contains("cargo xtask demo"));
    assert!(README.contains("cargo xtask test"));
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
                README.contains(&needle),
                "README's CLI table lacks {needle}"
            );
        }
        for sub in nested {
            let needle = format!("| `{} {}", command.get_name(), sub.get_name());
            assert!(
                README.contains(&needle),
                "README's CLI table lacks {needle}"
            );
        }
    }
}
