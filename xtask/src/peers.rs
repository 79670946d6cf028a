//! setup's Go step: builds the real peers the tests run (kube-apiserver,
//! kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl,
//! flanneld, the flannel CNI plugin) from the Go module proxy into the
//! cache outside the work tree.
//!
//! The catalog (names, versions, paths) is `pod_net_tests::peers`; the
//! recipes are here and in `xtask/peers/<builder>/go.{mod,sum}`, our builder
//! modules. A binary is rebuilt only when it is missing or its recorded
//! recipe (version, builder module, flags) differs. Everything the go
//! command fetches comes from the proxy alone (no `direct`: a module it does
//! not serve must fail, not fall back to cloning), with the installed Go
//! (`GOTOOLCHAIN=local`).
use std::{
    fmt::Write as _,
    fs,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use pod_net_tests::{
    cmd::describe,
    peers::{self, Builder, Peer},
};

use crate::run::{show, workspace_root};

const GOPROXY: &str = "https://proxy.golang.org";
/// The Go release line the builder modules are written for.
const GO_RELEASE: &str = "go1.26";
/// Attempts at fetching modules, and the pause after each failure.
const DOWNLOAD_PAUSES: [u64; 3] = [10, 30, 60];
/// Bound on one module download (a cold one of the k8s builder takes
/// under 15 s): a proxy that stops answering must not hang setup.
const DOWNLOAD_LIMIT: Duration = Duration::from_mins(10);
/// The one line dropped from flanneld's `main.go`: the tencentvpc backend,
/// whose dependency `github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/vpc`
/// the proxy does not serve.
const FLANNEL_DROPPED_IMPORT: &str = "pkg/backend/tencentvpc\"";

pub fn run() -> Result<()> {
    let wanted: Vec<(&Peer, String)> = peers::PEERS
        .iter()
        .map(|peer| Ok((peer, recipe_text(peer)?)))
        .collect::<Result<_>>()?;
    let stale: Vec<&(&Peer, String)> = wanted
        .iter()
        .filter(|(peer, recipe)| !is_current(peer, recipe))
        .collect();
    if stale.is_empty() {
        println!(
            "setup: Go-built peers present in {} ({})",
            peers::cache_root().join("peers").display(),
            wanted
                .iter()
                .map(|(peer, _)| format!("{} {}", peer.name, peer.version))
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(());
    }
    let go = Go::find()?;
    fs::create_dir_all(peers::cache_root())
        .with_context(|| format!("creating {}", peers::cache_root().display()))?;
    let _lock = Lock::take(&peers::cache_root().join(".setup-peers.lock"))?;
    let started = Instant::now();
    for builder in Builder::ALL {
        // Again under the lock: another setup may have built them meanwhile.
        let todo: Vec<&(&Peer, String)> = wanted
            .iter()
            .filter(|(peer, recipe)| peer.builder == builder && !is_current(peer, recipe))
            .collect();
        if todo.is_empty() {
            continue;
        }
        prepare(&go, builder)?;
        for (peer, recipe) in todo {
            build(&go, peer, recipe)?;
        }
    }
    println!(
        "setup: Go-built peers done in {} s; cache {}: modules {}, build cache {}, binaries {}",
        started.elapsed().as_secs(),
        peers::cache_root().display(),
        size_of(&peers::go_mod_cache()),
        size_of(&peers::go_build_cache()),
        size_of(&peers::cache_root().join("peers")),
    );
    Ok(())
}

/// The go command, checked to be the release the builders are written for.
struct Go {
    program: PathBuf,
}

impl Go {
    fn find() -> Result<Self> {
        let candidates = [PathBuf::from("go"), PathBuf::from("/usr/local/go/bin/go")];
        for program in candidates {
            let Ok(output) = Command::new(&program).arg("version").output() else {
                continue;
            };
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            if !output.status.success() {
                continue;
            }
            if !text.contains(&format!("{GO_RELEASE}."))
                && !text.contains(&format!("{GO_RELEASE} "))
            {
                bail!(
                    "{} is {}; the peers' builder modules need {GO_RELEASE}.x \
                     (Go comes with the machine; GOTOOLCHAIN=local, so no other toolchain is fetched)",
                    program.display(),
                    text.trim()
                );
            }
            println!("setup: using {} ({})", program.display(), text.trim());
            return Ok(Self { program });
        }
        bail!(
            "no go command (neither on PATH nor /usr/local/go/bin/go): the Go-built test peers \
             need {GO_RELEASE}.x, which this machine kind ships"
        )
    }

    /// `go args..` in `dir`, with the cache, proxy and toolchain settings.
    fn command(&self, dir: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(&self.program);
        command
            .args(args)
            .current_dir(dir)
            .env("GOMODCACHE", peers::go_mod_cache())
            .env("GOCACHE", peers::go_build_cache())
            .env("GOPATH", peers::go_path())
            .env("GOPROXY", GOPROXY)
            .env("GOTOOLCHAIN", "local")
            .env("GOFLAGS", "-mod=mod")
            .env("GOWORK", "off");
        command
    }
}

/// Lays out `builder`'s module in its build dir and fetches what it needs.
fn prepare(go: &Go, builder: Builder) -> Result<()> {
    let dir = builder.build_dir();
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let source = builder_source(builder);
    for file in ["go.mod", "go.sum"] {
        fs::copy(source.join(file), dir.join(file))
            .with_context(|| format!("copying {} into {}", file, dir.display()))?;
    }
    let started = Instant::now();
    println!(
        "setup: fetching the modules of {} {} from {GOPROXY} into {}",
        builder.dir_name(),
        builder.version(),
        peers::go_mod_cache().display()
    );
    if builder == Builder::Flanneld {
        let module = format!("github.com/flannel-io/flannel@{}", builder.version());
        download(go, &dir, &["mod", "download", &module])?;
        let source = peers::go_mod_cache().join(format!(
            "github.com/flannel-io/flannel@{}/main.go",
            builder.version()
        ));
        write_flanneld_main(&source, &dir)?;
    }
    download(go, &dir, &["mod", "download"])?;
    println!(
        "setup: modules of {} fetched in {} s",
        builder.dir_name(),
        started.elapsed().as_secs()
    );
    Ok(())
}

/// `xtask/peers/<builder>/`: our builder module's go.mod and go.sum.
fn builder_source(builder: Builder) -> PathBuf {
    workspace_root()
        .join("xtask/peers")
        .join(builder.dir_name())
}

/// Runs a go command that fetches modules, retrying a few times: the proxy
/// is reached over the network.
fn download(go: &Go, dir: &Path, args: &[&str]) -> Result<()> {
    let mut pauses = DOWNLOAD_PAUSES.iter();
    let log = dir.join("download.log");
    loop {
        let mut command = go.command(dir, args);
        let (status, stderr) = run_bounded(&mut command, &log, DOWNLOAD_LIMIT)?;
        if status == Some(true) {
            return Ok(());
        }
        let what = match status {
            None => format!("timed out after {} s", DOWNLOAD_LIMIT.as_secs()),
            Some(_) => "failed".to_owned(),
        };
        let Some(pause) = pauses.next() else {
            bail!(
                "{} {what} ({} attempts), the last said: {}",
                describe(&command),
                DOWNLOAD_PAUSES.len() + 1,
                stderr.trim()
            );
        };
        println!(
            "setup: {} {what}, retrying in {pause} s: {}",
            describe(&command),
            stderr.trim().lines().last().unwrap_or_default()
        );
        thread::sleep(Duration::from_secs(*pause));
    }
}

/// Runs `command` with its output in `log`, killing it after `limit`:
/// (Some(success) or None if it was killed, the log's text).
fn run_bounded(
    command: &mut Command,
    log: &Path,
    limit: Duration,
) -> Result<(Option<bool>, String)> {
    let file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut child = command
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("starting {}", describe(command)))?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status.success());
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(200));
    };
    Ok((status, fs::read_to_string(log).unwrap_or_default()))
}

/// flanneld's main package is its module root, which cannot be imported,
/// so the builder compiles a copy of its `main.go`, generated here from the
/// module cache into the build dir (never into the repository), without
/// the tencentvpc backend's import.
fn write_flanneld_main(source: &Path, dir: &Path) -> Result<()> {
    let text =
        fs::read_to_string(source).with_context(|| format!("reading {}", source.display()))?;
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| !line.contains(FLANNEL_DROPPED_IMPORT))
        .collect();
    let dropped = text.lines().count() - kept.len();
    if dropped != 1 {
        bail!(
            "{} has {dropped} lines importing {FLANNEL_DROPPED_IMPORT}, expected exactly 1: \
             the builder recipe needs a look",
            source.display()
        );
    }
    let target = dir.join("cmd/flanneld/main.go");
    fs::create_dir_all(dir.join("cmd/flanneld"))?;
    fs::write(&target, kept.join("\n") + "\n")
        .with_context(|| format!("writing {}", target.display()))?;
    println!(
        "setup: generated {} (flannel's main.go without the tencentvpc backend)",
        target.display()
    );
    Ok(())
}

/// How one peer is compiled.
struct Flags {
    cgo: bool,
    tags: Option<&'static str>,
    ldflags: String,
}

fn flags(peer: &Peer) -> Flags {
    match peer.builder {
        Builder::Kubernetes => {
            // What the release's build scripts stamp in; without it the
            // binaries say v0.0.0-master. A fixed date keeps builds
            // reproducible.
            let minor = peer.version.split('.').nth(1).unwrap_or_default();
            let mut ldflags = String::from("-s -w");
            for package in [
                "k8s.io/component-base/version",
                "k8s.io/client-go/pkg/version",
            ] {
                let _ = write!(
                    ldflags,
                    " -X {package}.gitVersion={v} -X {package}.gitMajor=1 \
                     -X {package}.gitMinor={minor} -X {package}.gitTreeState=clean",
                    v = peer.version
                );
            }
            ldflags.push_str(" -X k8s.io/component-base/version.buildDate=2026-01-01T00:00:00Z");
            Flags {
                cgo: false,
                tags: None,
                ldflags,
            }
        }
        // cgo for the udp backend (without it: `undefined: runCProxy`),
        // linked statically as upstream does.
        Builder::Flanneld => Flags {
            cgo: true,
            tags: Some("netgo,osusergo"),
            ldflags: format!(
                "-s -w -X github.com/flannel-io/flannel/pkg/version.Version={} -extldflags -static",
                peer.version
            ),
        },
        Builder::CniFlannel => Flags {
            cgo: false,
            tags: None,
            ldflags: format!(
                "-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion={}",
                peer.version
            ),
        },
    }
}

/// What a binary is built from, as recorded beside it.
fn recipe_text(peer: &Peer) -> Result<String> {
    let source = builder_source(peer.builder);
    let mut module = Vec::new();
    for file in ["go.mod", "go.sum"] {
        let path = source.join(file);
        module.extend(fs::read(&path).with_context(|| format!("reading {}", path.display()))?);
    }
    let flags = flags(peer);
    Ok(format!(
        "{} {}\npackage {}\nbuilder {} {:016x}\ncgo {}\ntags {}\nldflags {}\n",
        peer.name,
        peer.version,
        peer.package,
        peer.builder.dir_name(),
        fnv1a(&module),
        flags.cgo,
        flags.tags.unwrap_or("-"),
        flags.ldflags
    ))
}

fn is_current(peer: &Peer, recipe: &str) -> bool {
    peer.binary().is_file()
        && fs::read_to_string(peer.recipe_file()).is_ok_and(|recorded| recorded == recipe)
}

fn build(go: &Go, peer: &Peer, recipe: &str) -> Result<()> {
    let dir = peer.dir();
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // The old binary and its recipe stay in place (and consistent) until the
    // new binary is: tests that start meanwhile still find a peer to run.
    let partial = dir.join(format!(".{}.partial", peer.file));
    let flags = flags(peer);
    let partial_arg = partial.to_string_lossy().into_owned();
    let mut args = vec!["build", "-trimpath"];
    if let Some(tags) = flags.tags {
        args.extend(["-tags", tags]);
    }
    args.extend(["-ldflags", &flags.ldflags, "-o", &partial_arg, peer.package]);
    println!(
        "setup: building {} {} (go build {})",
        peer.name, peer.version, peer.package
    );
    let started = Instant::now();
    show(
        go.command(&peer.builder.build_dir(), &args)
            .env("CGO_ENABLED", if flags.cgo { "1" } else { "0" }),
    )
    .with_context(|| {
        format!(
            "building {} {} ({} free in {}; a cold build of every peer needs about 6 GB)",
            peer.name,
            peer.version,
            free_space(&peers::cache_root()),
            peers::cache_root().display()
        )
    })?;
    let seconds = started.elapsed().as_secs();
    check_version(peer, &partial)?;
    fs::rename(&partial, peer.binary())
        .with_context(|| format!("moving the build to {}", peer.binary().display()))?;
    fs::write(peer.recipe_file(), recipe)
        .with_context(|| format!("writing {}", peer.recipe_file().display()))?;
    let bytes = fs::metadata(peer.binary()).map_or(0, |meta| meta.len());
    println!(
        "setup: built {} {} in {seconds} s: {} ({} MB)",
        peer.name,
        peer.version,
        peer.binary().display(),
        bytes / 1_000_000
    );
    Ok(())
}

/// Runs the fresh binary and checks it reports the release it was built as.
fn check_version(peer: &Peer, binary: &Path) -> Result<()> {
    let mut command = Command::new(binary);
    match peer.builder {
        Builder::Kubernetes if peer.name == "kubectl" => {
            command.args(["version", "--client"]);
        }
        Builder::Kubernetes | Builder::Flanneld => {
            command.arg("--version");
        }
        // A CNI plugin run without CNI_COMMAND prints its "about" line.
        Builder::CniFlannel => {
            command.env_remove("CNI_COMMAND");
        }
    }
    let output = command
        .output()
        .with_context(|| format!("running {}", describe(&command)))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !text.contains(peer.version) {
        bail!(
            "{} does not report {}: {}",
            describe(&command),
            peer.version,
            text.trim()
        );
    }
    Ok(())
}

/// 64-bit FNV-1a: a fingerprint of the builder module in the recipe.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The space left on `path`'s file system, in GB, or `?`.
fn free_space(path: &Path) -> String {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return "?".to_owned();
    };
    // SAFETY: statvfs fills the struct it is given; all-zero is a valid one.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a struct of the right type.
    if unsafe { libc::statvfs(c_path.as_ptr(), &raw mut stats) } != 0 {
        return "?".to_owned();
    }
    let megabytes = stats.f_bavail.saturating_mul(stats.f_frsize) / 1_000_000;
    format!("{}.{} GB", megabytes / 1000, megabytes % 1000 / 100)
}

/// `du -sh`'s figure for `path`, or `?`.
fn size_of(path: &Path) -> String {
    Command::new("du")
        .arg("-sh")
        .arg(path)
        .output()
        .ok()
        .and_then(|output| {
            String::from_utf8_lossy(&output.stdout)
                .split_whitespace()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "?".to_owned())
}

/// An exclusive `flock` on a file, so two setups never build into one cache
/// at once; released when dropped (the file closes).
struct Lock {
    _file: fs::File,
}

impl Lock {
    fn take(path: &Path) -> Result<Self> {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            println!(
                "setup: another setup is building the peers (holds {}); waiting for it",
                path.display()
            );
            // SAFETY: as above.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                bail!(
                    "locking {}: {}",
                    path.display(),
                    std::io::Error::last_os_error()
                );
            }
        }
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_flags_stamp_the_release() {
        let flags = flags(peers::peer("kubelet").unwrap());
        assert!(!flags.cgo);
        assert!(
            flags
                .ldflags
                .contains("-X k8s.io/component-base/version.gitVersion=v1.37.2 ")
        );
        assert!(
            flags
                .ldflags
                .contains("-X k8s.io/client-go/pkg/version.gitMinor=37 ")
        );
    }

    #[test]
    fn flanneld_main_loses_exactly_the_tencentvpc_import() {
        let dir = std::env::temp_dir().join(format!("xtask-flannel-main-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let source = dir.join("main.go");
        fs::write(
            &source,
            "import (\n\t_ \"github.com/flannel-io/flannel/pkg/backend/vxlan\"\n\t\
             _ \"github.com/flannel-io/flannel/pkg/backend/tencentvpc\"\n)\n",
        )
        .unwrap();
        write_flanneld_main(&source, &dir).unwrap();
        assert_eq!(
            fs::read_to_string(dir.join("cmd/flanneld/main.go")).unwrap(),
            "import (\n\t_ \"github.com/flannel-io/flannel/pkg/backend/vxlan\"\n)\n"
        );
        // A release without that import needs a new look at the recipe.
        fs::write(&source, "package main\n").unwrap();
        let error = write_flanneld_main(&source, &dir).unwrap_err().to_string();
        assert!(error.contains("has 0 lines importing"), "{error}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn recipes_name_the_version_and_the_builder_module() {
        let recipe = recipe_text(peers::peer("flanneld").unwrap()).unwrap();
        assert!(recipe.starts_with("flanneld v0.28.10\npackage ./cmd/flanneld\nbuilder flanneld "));
        assert!(recipe.contains("\ncgo true\ntags netgo,osusergo\n"));
    }
}
