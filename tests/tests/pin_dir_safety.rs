//! A pin dir is where root loads programs and deletes pins, under a
//! directory (`/sys/fs/bpf`, mode 1777) that anyone can write to. Each test
//! runs pod-net in a private mount namespace (`unshare -m`) on a bpffs of its
//! own, so nothing here can touch the host's mounts or pins.
use std::process::Command;

use pod_net_tests::{require_root, rig::pod_net_binary};

/// Runs `script` in bash in a private mount namespace whose /sys/fs/bpf is
/// a fresh bpffs, with `$POD_NET` the binary under test and `bpf_mounts`
/// counting the bpffs mounts there. Returns stdout and stderr, interleaved.
fn in_private_mounts(script: &str) -> String {
    let output = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "bash", "-c"])
        .arg(format!(
            "set -u\nexec 2>&1\nmount -t bpf bpf /sys/fs/bpf\nscratch=$(mktemp -d)\n\
             bpf_mounts() {{ awk '$5 == \"/sys/fs/bpf\" && / - bpf /' /proc/self/mountinfo | wc -l; }}\n\
             {script}\nrm -rf \"$scratch\""
        ))
        .env("POD_NET", pod_net_binary())
        .output()
        .expect("run unshare");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "script failed: {text}");
    text
}

fn assert_has(text: &str, needle: &str) {
    assert!(text.contains(needle), "expected {needle:?} in:\n{text}");
}

#[test]
fn symlinks_and_dot_dot_are_refused_without_mounting_anything() {
    require_root!();
    let text = in_private_mounts(
        r#"
        before=$(bpf_mounts)
        ln -s "$scratch" /sys/fs/bpf/planted
        "$POD_NET" --pin-dir /sys/fs/bpf/planted/pd load; echo "symlink rc=$?"
        "$POD_NET" --pin-dir /sys/fs/bpf/../../tmp/pd load; echo "dotdot rc=$?"
        "$POD_NET" --pin-dir pd load; echo "relative rc=$?"
        echo "mounts changed by $(( $(bpf_mounts) - before ))"
        echo "scratch holds [$(ls -A "$scratch")]"
        "#,
    );
    assert_has(
        &text,
        "pod-net: error: pin dir /sys/fs/bpf/planted/pd goes through the symlink \
         /sys/fs/bpf/planted; name the real directory\nsymlink rc=1",
    );
    assert_has(
        &text,
        "pod-net: error: pin dir /sys/fs/bpf/../../tmp/pd contains `..` or `.`\ndotdot rc=1",
    );
    assert_has(
        &text,
        "pod-net: error: pin dir pd is not an absolute path\nrelative rc=1",
    );
    assert_has(&text, "mounts changed by 0");
    assert_has(&text, "scratch holds []");
}

#[test]
fn bpffs_is_mounted_only_at_sys_fs_bpf_only_over_nothing_and_not_left_after_a_failure() {
    require_root!();
    let text = in_private_mounts(
        r#"
        # Nothing mounted at all: the mine and the host's copy both go.
        umount /sys/fs/bpf; umount /sys/fs/bpf
        echo "start with $(bpf_mounts)"
        # A load that fails after mounting leaves no mount behind.
        "$POD_NET" --pin-dir /sys/fs/bpf/pd load --max-pods 4294967295 >/dev/null 2>&1
        echo "failed load rc=$? mounts $(bpf_mounts)"
        "$POD_NET" --pin-dir /sys/fs/bpf/pd load >/dev/null; echo "load rc=$? mounts $(bpf_mounts)"
        echo "mode $(stat -c %a /sys/fs/bpf/pd) $(stat -c %a /sys/fs/bpf/pd/progs)"
        "$POD_NET" --pin-dir /sys/fs/bpf/pd2 load >/dev/null; echo "second rc=$? mounts $(bpf_mounts)"
        "$POD_NET" --pin-dir /sys/fs/bpf/pd unload >/dev/null
        "$POD_NET" --pin-dir /sys/fs/bpf/pd2 unload >/dev/null
        umount /sys/fs/bpf
        # Something else mounted there: never mounted over.
        mount -t tmpfs none /sys/fs/bpf
        "$POD_NET" --pin-dir /sys/fs/bpf/pd load; echo "over tmpfs rc=$? mounts $(bpf_mounts)"
        "$POD_NET" --pin-dir "$scratch/pd" load; echo "off bpffs rc=$?"
        "#,
    );
    assert_has(&text, "start with 0");
    assert_has(&text, "failed load rc=1 mounts 0");
    assert_has(&text, "load rc=0 mounts 1");
    assert_has(&text, "mode 700 700");
    assert_has(&text, "second rc=0 mounts 1");
    assert_has(
        &text,
        "pod-net: error: /sys/fs/bpf has another filesystem mounted on it, not bpffs; pod-net \
         will not mount over it\nover tmpfs rc=1 mounts 0",
    );
    assert_has(
        &text,
        "is not on a bpf filesystem; use a path under /sys/fs/bpf\noff bpffs rc=1",
    );
}

#[test]
fn foreign_open_and_nested_pin_dirs_are_refused() {
    require_root!();
    let text = in_private_mounts(
        r#"
        mkdir -m 0700 /sys/fs/bpf/theirs && chown 65534 /sys/fs/bpf/theirs
        "$POD_NET" --pin-dir /sys/fs/bpf/theirs load; echo "foreign owner rc=$?"
        mkdir -m 0777 /sys/fs/bpf/open
        "$POD_NET" --pin-dir /sys/fs/bpf/open load; echo "open mode rc=$?"
        "$POD_NET" --pin-dir /sys/fs/bpf/open/pd load; echo "under open rc=$?"
        "$POD_NET" --pin-dir /sys/fs/bpf load; echo "mount root rc=$?"
        "$POD_NET" --pin-dir /sys/fs/bpf/pd load >/dev/null
        "$POD_NET" --pin-dir /sys/fs/bpf/pd/inner load; echo "nested rc=$?"
        "$POD_NET" --pin-dir /sys/fs/bpf/pd unload >/dev/null; echo "unload rc=$?"
        "#,
    );
    assert_has(
        &text,
        "pod-net: error: pin dir /sys/fs/bpf/theirs: /sys/fs/bpf/theirs is owned by uid 65534, \
         not by uid 0 running pod-net\nforeign owner rc=1",
    );
    assert_has(
        &text,
        "pod-net: error: pin dir /sys/fs/bpf/open: /sys/fs/bpf/open is writable by group or \
         others (mode 777)\nopen mode rc=1",
    );
    assert_has(
        &text,
        "is writable by group or others (mode 777)\nunder open rc=1",
    );
    assert_has(
        &text,
        "pod-net: error: pin dir /sys/fs/bpf is the root of a filesystem; use a directory below \
         it\nmount root rc=1",
    );
    assert_has(
        &text,
        "pod-net: error: pin dir /sys/fs/bpf/pd/inner is inside pod-net pin dir /sys/fs/bpf/pd; \
         pick a path outside it\nnested rc=1",
    );
    assert_has(&text, "unload rc=0");
}

#[test]
fn a_directory_that_is_not_a_pin_dir_is_neither_loaded_into_nor_unloaded() {
    require_root!();
    let text = in_private_mounts(
        r#"
        mkdir -m 0700 /sys/fs/bpf/other
        bpftool map create /sys/fs/bpf/other/config type array key 4 value 4 entries 1 name config
        bpftool map create /sys/fs/bpf/other/counters type array key 4 value 4 entries 1 name counters
        "$POD_NET" --pin-dir /sys/fs/bpf/other unload; echo "unload rc=$?"
        "$POD_NET" --pin-dir /sys/fs/bpf/other load; echo "load rc=$?"
        echo "left [$(ls /sys/fs/bpf/other | tr '\n' ' ')]"
        "#,
    );
    assert_has(
        &text,
        "pod-net: error: /sys/fs/bpf/other is not a pod-net pin dir (no pod-net-pin-dir marker, \
         no pinned pod_egress); nothing was removed\nunload rc=1",
    );
    assert_has(
        &text,
        "pod-net: error: /sys/fs/bpf/other is not a pod-net pin dir (it holds config, counters); \
         pick another pin dir\nload rc=1",
    );
    assert_has(&text, "left [config counters ]");
}
