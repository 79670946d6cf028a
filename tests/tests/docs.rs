//! The docs stay true: every counter reason and every CLI command is
//! documented, word for word where the code has the words, and every link
//! between the README and the pages of `docs/` leads somewhere.
use std::{
    collections::{BTreeSet, HashMap},
    fmt::Write as _,
    fs,
    path::{Component, Path, PathBuf},
};

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

/// Every relative link in `README.md` and `docs/*.md` leads to a file that
/// exists and, with a `#anchor`, to a heading of that file.
#[test]
fn every_relative_link_resolves() {
    let pages = pages();
    let mut headings = HashMap::new();
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in &pages {
        let text = fs::read_to_string(page).unwrap();
        for target in links(&text) {
            if is_external(&target) {
                continue;
            }
            checked += 1;
            let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let file = if path.is_empty() {
                page.clone()
            } else {
                normalize(&page.parent().unwrap().join(path))
            };
            if !file.exists() {
                broken.push(format!("{}: {target}: no such file", shown(page)));
                continue;
            }
            if anchor.is_empty() {
                continue;
            }
            if file.extension().is_none_or(|ext| ext != "md") {
                broken.push(format!(
                    "{}: {target}: an anchor into a file that is not Markdown",
                    shown(page)
                ));
                continue;
            }
            let slugs = headings
                .entry(file.clone())
                .or_insert_with(|| heading_slugs(&fs::read_to_string(&file).unwrap()));
            if !slugs.contains(anchor) {
                broken.push(format!(
                    "{}: {target}: {} has no heading #{anchor}",
                    shown(page),
                    shown(&file)
                ));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(checked > 50, "only {checked} relative links found");
}

/// The README (the front door) and the contents page link to every page
/// of the manual.
#[test]
fn readme_and_contents_link_every_page() {
    let root = root();
    for index in [root.join("README.md"), root.join("docs/README.md")] {
        let text = fs::read_to_string(&index).unwrap();
        let linked: BTreeSet<PathBuf> = links(&text)
            .into_iter()
            .filter(|target| !is_external(target))
            .map(|target| {
                let path = target.split('#').next().unwrap_or_default().to_owned();
                normalize(&index.parent().unwrap().join(path))
            })
            .collect();
        for page in pages() {
            if page == index || page == root.join("README.md") {
                continue;
            }
            assert!(
                linked.contains(&page),
                "{} does not link to {}",
                shown(&index),
                shown(&page)
            );
        }
    }
}

#[test]
fn slugs_follow_github() {
    let slugs = heading_slugs(
        "# Upgrades, crashes and repair\n\
         ## Attaching: TCX or tc\n\
         ```sh\n# not a heading\n```\n\
         ## The node config file: `apply` and `agent --config`\n\
         ### Cross node: pod to pod, VXLAN and direct_routing\n\
         ## Notes\n## Notes\n",
    );
    let expected: BTreeSet<String> = [
        "upgrades-crashes-and-repair",
        "attaching-tcx-or-tc",
        "the-node-config-file-apply-and-agent---config",
        "cross-node-pod-to-pod-vxlan-and-direct_routing",
        "notes",
        "notes-1",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(slugs, expected);
    assert_eq!(
        links("[a](x.md) `[b](y.md)` [c\nd](z.md#e) ![f](g.png)\n```\n[h](i.md)\n```\n"),
        ["x.md", "z.md#e", "g.png"]
    );
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `README.md` and every `docs/*.md`.
fn pages() -> Vec<PathBuf> {
    let root = root();
    let mut pages = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

fn shown(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

fn is_external(target: &str) -> bool {
    target.contains("://") || target.starts_with("mailto:")
}

/// `a/./b/../c` as `a/c`, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The text outside fenced code blocks, line by line.
fn prose(markdown: &str) -> Vec<&str> {
    let mut fence: Option<String> = None;
    let mut lines = Vec::new();
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        let marker: String = trimmed
            .chars()
            .take_while(|&c| c == '`' || c == '~')
            .collect();
        let is_marker =
            marker.len() >= 3 && marker.chars().all(|c| c == marker.chars().next().unwrap());
        match &fence {
            Some(open) => {
                if is_marker
                    && marker.starts_with(open.as_str())
                    && trimmed[marker.len()..].trim().is_empty()
                {
                    fence = None;
                }
            }
            None if is_marker => fence = Some(marker),
            None => lines.push(line),
        }
    }
    lines
}

/// Text with its inline code spans taken out: a run of N backticks up to
/// the next run of exactly N.
fn without_code_spans(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let run = |at: usize| chars[at..].iter().take_while(|&&c| c == '`').count();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '`' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let open = run(i);
        let mut j = i + open;
        let mut close = None;
        while j < chars.len() {
            if chars[j] == '`' {
                let length = run(j);
                if length == open {
                    close = Some(j + length);
                    break;
                }
                j += length;
            } else {
                j += 1;
            }
        }
        if let Some(end) = close {
            out.push(' ');
            i = end;
        } else {
            out.extend(&chars[i..i + open]);
            i += open;
        }
    }
    out
}

/// The targets of the inline links and images (`[text](target)`) and of
/// the link reference definitions (`[label]: target`) outside code.
fn links(markdown: &str) -> Vec<String> {
    let text = without_code_spans(&prose(markdown).join("\n"));
    let mut targets = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        let target = if let Some(inner) = rest.strip_prefix('<') {
            inner.split('>').next().unwrap_or_default()
        } else {
            rest.split([')', ' ', '\n']).next().unwrap_or_default()
        };
        targets.push(target.to_owned());
    }
    for line in text.lines() {
        let line = line.trim_start();
        if let Some(label_end) = line.strip_prefix('[').and_then(|l| l.find("]:")) {
            let target = line[label_end + 3..].split_whitespace().next();
            if let Some(target) = target {
                targets.push(target.to_owned());
            }
        }
    }
    targets
}

/// The anchors GitHub gives a page's headings: the heading's text in
/// lower case, without punctuation other than hyphens and underscores,
/// spaces made hyphens; the second of two equal ones gets `-1`, and so on.
fn heading_slugs(markdown: &str) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut slugs = BTreeSet::new();
    for line in prose(markdown) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let text = line[hashes..].trim().trim_end_matches('#').trim();
        // A link in a heading reads as its text.
        let text = strip_link_targets(text);
        let base: String = text
            .to_lowercase()
            .chars()
            .filter(|&c| c.is_alphanumeric() || c == '-' || c == '_' || c == ' ')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let count = seen.entry(base.clone()).or_insert(0);
        let slug = if *count == 0 {
            base.clone()
        } else {
            format!("{base}-{count}")
        };
        *count += 1;
        slugs.insert(slug);
    }
    slugs
}

/// `[text](target)` as `text`.
fn strip_link_targets(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("](") {
        out.push_str(&rest[..at]);
        rest = &rest[at + 2..];
        rest = rest.split_once(')').map_or("", |(_, after)| after);
    }
    out.push_str(rest);
    out
}
