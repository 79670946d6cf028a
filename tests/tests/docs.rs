//! The README stays true: every counter reason and every CLI command is
//! documented.
use clap::CommandFactory as _;
use pod_net::cli::Cli;
use pod_net_common::Reason;

const README: &str = include_str!("../../README.md");

#[test]
fn readme_documents_every_reason() {
    for reason in Reason::ALL {
        let row = format!("| `{}` |", reason.name());
        assert!(
            README.contains(&row),
            "README lacks a row for {}",
            reason.name()
        );
    }
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
