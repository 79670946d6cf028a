//! Container runtimes for testing the image, each private to one test and
//! leaving nothing on the host: a containerd with its own root, state,
//! socket and mount namespace, and podman with its storage in a temp dir.
//! Both see a fresh tmpfs on `/run` (containerd's shims and runc state,
//! podman's runc state) inside a mount namespace of their own.
use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result};

use crate::{
    cmd::{output_of, run_command},
    deploy::workspace_root,
    wait::wait_until,
};

/// A directory under /tmp for one test, removed on drop (after the
/// processes started with it in their command line are gone).
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    pub fn new(what: &str) -> Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "pod-net-{what}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        if path.exists() {
            fs::remove_dir_all(&path).with_context(|| format!("clearing {}", path.display()))?;
        }
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        // podman's conmon runs `podman container cleanup` after a container
        // exits, in the background: let it finish before the files go.
        let _ = wait_until(
            "processes using the scratch dir",
            Duration::from_secs(10),
            || processes_mentioning(&self.path).is_empty(),
        );
        if fs::remove_dir_all(&self.path).is_err() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Pids whose command line names `path` (processes a test started).
#[must_use]
pub fn processes_mentioning(path: &Path) -> Vec<u32> {
    let needle = path.to_string_lossy().into_owned();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(&needle))
        })
        .collect()
}

/// `unshare` into a private mount namespace with a tmpfs on `/run` (and
/// on each of `more_tmpfs`), then `exec` `program` with the arguments
/// added to the returned command.
fn in_private_mounts(program: &str, more_tmpfs: &[&str]) -> Command {
    let mut script = String::from("set -e; mount -t tmpfs tmpfs /run; ");
    for dir in more_tmpfs {
        let _ = write!(script, "mount -t tmpfs tmpfs {dir}; ");
    }
    let _ = write!(script, "exec {program} \"$@\"");
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(script)
        .arg("sh");
    command
}

/// A containerd of one test, CRI off (image import and `ctr run` only).
/// `ctr args..` against the containerd whose socket is
/// `dir/containerd.sock`, in the kubelet's namespace (`k8s.io`).
#[must_use]
pub fn ctr(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("ctr");
    command
        .arg("--address")
        .arg(dir.join("containerd.sock"))
        .args(["--namespace", "k8s.io"])
        .args(args);
    command
}

pub struct PrivateContainerd {
    dir: PathBuf,
    child: Child,
}

impl PrivateContainerd {
    /// Starts containerd with everything under `dir` and waits until it
    /// answers.
    pub fn start(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let config = dir.join("config.toml");
        let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
        fs::write(
            &config,
            format!(
                "version = 2\nroot = {root:?}\nstate = {state:?}\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = {socket:?}\n\
                 [ttrpc]\n  address = {ttrpc:?}\n\
                 [debug]\n  address = \"\"\n\
                 [metrics]\n  address = \"\"\n",
                root = path("root"),
                state = path("state"),
                socket = path("containerd.sock"),
                ttrpc = path("containerd.sock.ttrpc"),
            ),
        )
        .context("writing containerd's config")?;
        let log = fs::File::create(dir.join("containerd.log"))?;
        let child = in_private_mounts("containerd", &[])
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting containerd (is it installed?)")?;
        let containerd = Self {
            dir: dir.to_path_buf(),
            child,
        };
        wait_until("containerd to answer", Duration::from_secs(20), || {
            output_of(&mut containerd.ctr(&["version"])).is_ok_and(|out| out.status.success())
        })
        .with_context(|| format!("containerd's log:\n{}", containerd.log()))?;
        Ok(containerd)
    }

    /// `ctr` against this containerd, in the `k8s.io` namespace (the
    /// kubelet's), with its FIFOs in the test's directory.
    #[must_use]
    pub fn ctr(&self, args: &[&str]) -> Command {
        ctr(&self.dir, args)
    }

    /// `ctr images import` of an OCI archive; the names it imported.
    pub fn import(&self, archive: &Path) -> Result<String> {
        let archive = archive.to_string_lossy();
        run_command(&mut self.ctr(&["images", "import", &archive]))
            .with_context(|| format!("containerd's log:\n{}", self.log()))
    }

    /// `ctr run --rm` of `image` with `argv`, in a network namespace of its
    /// own (ctr's default); its stdout.
    pub fn run(&self, image: &str, id: &str, argv: &[&str]) -> Result<String> {
        let fifo = self.dir.join("fifo");
        fs::create_dir_all(&fifo)?;
        let fifo = fifo.to_string_lossy().into_owned();
        let mut command = self.ctr(&["run", "--rm", "--fifo-dir", &fifo, image, id]);
        command.args(argv);
        run_command(&mut command).with_context(|| format!("containerd's log:\n{}", self.log()))
    }

    #[must_use]
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) of the containerd this guard started (unshare
            // and sh exec it, so the child's pid is containerd's).
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let stopped = wait_until("containerd to stop", Duration::from_secs(10), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if stopped.is_err() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// podman with its storage, run and temp dirs under one test's directory
/// (vfs storage, no events, no network config of the host's).
pub struct Podman {
    dir: PathBuf,
}

impl Podman {
    #[must_use]
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    /// `podman` with the private global flags, then `args`. `/var/lib` is a
    /// tmpfs too: podman keeps a blob cache in /var/lib/containers whatever
    /// its `--root`.
    #[must_use]
    pub fn command(&self, args: &[&str]) -> Command {
        let path = |name: &str| self.dir.join(name).to_string_lossy().into_owned();
        let mut command = in_private_mounts("podman", &["/var/lib"]);
        command
            .args(["--root", &path("root"), "--runroot", &path("runroot")])
            .args(["--tmpdir", &path("tmp")])
            .args(["--network-config-dir", &path("net")])
            .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs"])
            .args(["--events-backend", "none"])
            .args(args);
        command
    }

    /// `podman load -i archive`; its output names the loaded images.
    pub fn load(&self, archive: &Path) -> Result<String> {
        let archive = archive.to_string_lossy();
        run_command(&mut self.command(&["load", "-i", &archive]))
    }

    /// The arguments `podman run` needs here before the image: podman's
    /// default rlimits (`RLIMIT_NOFILE` 1048576, a high `RLIMIT_NPROC`) are
    /// above this machine's hard limits, which root without
    /// `CAP_SYS_RESOURCE` cannot raise ("error setting rlimit type 7:
    /// operation not permitted").
    pub const RUN_LIMITS: [&str; 4] = [
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=4096:4096",
    ];
}

/// The image archive to test: `$POD_NET_IMAGE` if set (a prebuilt
/// archive), else what `cargo xtask image` writes (target/image/), built
/// once per test process through the xtask binary `cargo xtask test` built,
/// so no cargo runs inside a test's own cargo.
pub fn image_archive() -> Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    if let Some(path) = std::env::var_os("POD_NET_IMAGE") {
        return Ok(PathBuf::from(path));
    }
    BUILT
        .get_or_init(|| build_image().map_err(|err| format!("{err:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build_image() -> Result<PathBuf> {
    let xtask = crate::rig::sibling_binary("xtask");
    let output = workspace_root().join("target/image/pod-net_dev.oci.tar");
    let status = Command::new(&xtask)
        .args(["image", "--tag", "pod-net:dev", "--output"])
        .arg(&output)
        .current_dir(workspace_root())
        .status()
        .with_context(|| {
            format!(
                "running {} image (build it with `cargo build --bins`)",
                xtask.display()
            )
        })?;
    anyhow::ensure!(status.success(), "xtask image failed ({status})");
    Ok(output)
}
