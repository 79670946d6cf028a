//! The README stays true: every counter reason and command is documented.
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
    for needle in [
        "cargo xtask demo",
        "cargo xtask test",
        "`load",
        "`unload`",
        "`status",
        "`pod add",
        "`pod del",
        "`pod list",
        "`stats",
    ] {
        assert!(README.contains(needle), "README lacks {needle}");
    }
}
