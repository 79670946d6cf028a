//! `pod-net load` and `pod-net unload`: putting the datapath on bpffs and
//! taking it off again.
//!
//! `load` pins programs and maps and exits; the pinned TCX links keep the
//! programs attached with no process running. Loading over a loaded pin dir
//! keeps the maps with their entries and swaps the program inside every
//! existing link (`bpf_link_update`), so traffic never stops.
use std::{
    fs, io,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    EbpfLoader,
    maps::MapData,
    programs::{
        SchedClassifier,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
    },
};
use pod_net_common::{
    Counter, Endpoint, EndpointKey, map_names, program_names, reason::REASON_COUNT,
};

use crate::{
    ebpf_object,
    pins::{PinDir, ensure_bpffs},
};

/// The key and value sizes this build's maps have. A pinned map of another
/// layout must not be handed to the new programs.
struct MapLayout {
    name: &'static str,
    key_size: u32,
    value_size: u32,
    max_entries: Option<u32>,
}

#[expect(clippy::cast_possible_truncation, reason = "map types are tiny")]
const MAP_LAYOUTS: [MapLayout; 2] = [
    MapLayout {
        name: map_names::LOCAL_ENDPOINTS,
        key_size: size_of::<EndpointKey>() as u32,
        value_size: size_of::<Endpoint>() as u32,
        max_entries: None,
    },
    MapLayout {
        name: map_names::COUNTERS,
        key_size: size_of::<u32>() as u32,
        value_size: size_of::<Counter>() as u32,
        max_entries: Some(REASON_COUNT as u32),
    },
];

/// What `load` may change about a new datapath.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Capacity of `local_endpoints`; the build's default when `None`. An
    /// existing map keeps its size: resizing means `unload` first.
    pub max_pods: Option<u32>,
}

#[derive(Debug)]
pub struct LoadReport {
    pub mounted_bpffs: bool,
    /// A program was already pinned and has been replaced in place.
    pub replaced: bool,
    /// Existing links switched to the new program.
    pub links_updated: usize,
}

/// Loads (or reloads) the datapath into `pins`.
pub fn load(pins: &PinDir, options: &LoadOptions) -> Result<LoadReport> {
    if options.max_pods == Some(0) {
        bail!("--max-pods must be at least 1");
    }
    let mounted_bpffs = ensure_bpffs(pins.root())?;
    for dir in [
        pins.root().to_path_buf(),
        pins.programs_dir(),
        pins.links_dir(),
    ] {
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _lock = pins.lock()?;
    check_pinned_layouts(pins)?;
    check_pinned_capacity(pins, options)?;

    let new_map_pins: Vec<PathBuf> = MAP_LAYOUTS
        .iter()
        .map(|layout| pins.map(layout.name))
        .filter(|path| !path.exists())
        .collect();
    let result = load_locked(pins, options);
    if result.is_err() {
        // Leave no maps behind that this failed attempt created.
        for path in &new_map_pins {
            let _ = fs::remove_file(path);
        }
    }
    let (replaced, links_updated) = result?;
    Ok(LoadReport {
        mounted_bpffs,
        replaced,
        links_updated,
    })
}

fn load_locked(pins: &PinDir, options: &LoadOptions) -> Result<(bool, usize)> {
    let mut loader = EbpfLoader::new();
    for layout in &MAP_LAYOUTS {
        loader.map_pin_path(layout.name, pins.map(layout.name));
    }
    if let Some(max_pods) = options.max_pods {
        loader.map_max_entries(map_names::LOCAL_ENDPOINTS, max_pods);
    }
    let mut ebpf = loader
        .load(ebpf_object())
        .context("loading the pod-net eBPF object")?;
    let program: &mut SchedClassifier = ebpf
        .program_mut(program_names::POD_EGRESS)
        .context("the eBPF object has no pod_egress program")?
        .try_into()?;
    program
        .load()
        .context("the kernel verifier rejected pod_egress")?;

    let program_path = pins.program(program_names::POD_EGRESS);
    let replaced = program_path.exists();
    let links_updated = if replaced {
        switch_links(pins, program)?
    } else {
        0
    };
    pin_replacing(program, &program_path)?;
    Ok((replaced, links_updated))
}

/// Points every pinned link at `program`, atomically per link.
fn switch_links(pins: &PinDir, program: &mut SchedClassifier) -> Result<usize> {
    let mut updated = 0;
    for entry in pins.pinned_links()? {
        let pinned = PinnedLink::from_pin(&entry.path)
            .with_context(|| format!("opening pinned link {}", entry.path.display()))?;
        let link = SchedClassifierLink::try_from(FdLink::from(pinned))
            .with_context(|| format!("{} is not a TCX link", entry.path.display()))?;
        program
            .attach_to_link(link)
            .with_context(|| format!("updating the program in {}", entry.path.display()))?;
        updated += 1;
    }
    Ok(updated)
}

/// Pins `program` at `path`, replacing an older pin by rename so the path
/// never goes missing.
fn pin_replacing(program: &mut SchedClassifier, path: &Path) -> Result<()> {
    // bpffs refuses names with dots.
    let mut staging = path.as_os_str().to_owned();
    staging.push("_staging");
    let staging = PathBuf::from(staging);
    let _ = fs::remove_file(&staging);
    program
        .pin(&staging)
        .with_context(|| format!("pinning program at {}", staging.display()))?;
    fs::rename(&staging, path).with_context(|| format!("moving pin to {}", path.display()))
}

/// Refuses pinned maps whose layout differs from this build's.
fn check_pinned_layouts(pins: &PinDir) -> Result<()> {
    for layout in &MAP_LAYOUTS {
        let path = pins.map(layout.name);
        if !path.exists() {
            continue;
        }
        let info = MapData::from_pin(&path)
            .and_then(|map| map.info())
            .with_context(|| format!("reading pinned map {}", path.display()))?;
        let entries_differ = layout
            .max_entries
            .is_some_and(|expected| expected != info.max_entries());
        if info.key_size() != layout.key_size
            || info.value_size() != layout.value_size
            || entries_differ
        {
            bail!(
                "pinned map {} has key/value size {}/{} and {} entries, but this build expects \
                 {}/{}{}; it was made by another pod-net version. Run `pod-net unload` with that \
                 version first (this drops its entries)",
                path.display(),
                info.key_size(),
                info.value_size(),
                info.max_entries(),
                layout.key_size,
                layout.value_size,
                layout
                    .max_entries
                    .map(|entries| format!(" and {entries} entries"))
                    .unwrap_or_default(),
            );
        }
    }
    Ok(())
}

/// Refuses a `--max-pods` that differs from an existing map's capacity.
fn check_pinned_capacity(pins: &PinDir, options: &LoadOptions) -> Result<()> {
    let Some(wanted) = options.max_pods else {
        return Ok(());
    };
    let path = pins.map(map_names::LOCAL_ENDPOINTS);
    if !path.exists() {
        return Ok(());
    }
    let capacity = MapData::from_pin(&path)
        .and_then(|map| map.info())
        .with_context(|| format!("reading pinned map {}", path.display()))?
        .max_entries();
    if capacity != wanted {
        bail!(
            "local_endpoints at {} holds up to {capacity} pods; it cannot be resized to {wanted} \
             in place (`pod-net unload` first, which drops its entries)",
            path.display()
        );
    }
    Ok(())
}

#[derive(Debug, Default)]
pub struct UnloadReport {
    pub links_removed: usize,
}

/// Detaches everything and removes the pin dir. Traffic falls back to the
/// kernel path (the bridge) as the links go.
pub fn unload(pins: &PinDir) -> Result<UnloadReport> {
    if !pins.root().exists() {
        bail!(
            "pod-net is not loaded at {} (no such pin dir)",
            pins.root().display()
        );
    }
    let _lock = pins.lock()?;
    let mut report = UnloadReport::default();
    for link in pins.pinned_links()? {
        remove_pin(&link.path)?;
        report.links_removed += 1;
    }
    remove_pin(&pins.program(program_names::POD_EGRESS))?;
    for layout in &MAP_LAYOUTS {
        remove_pin(&pins.map(layout.name))?;
    }
    for dir in [
        pins.links_dir(),
        pins.programs_dir(),
        pins.root().to_path_buf(),
    ] {
        match fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => {
                return Err(err).with_context(|| {
                    format!(
                        "removing {} (does it hold pins of another tool?)",
                        dir.display()
                    )
                });
            }
        }
    }
    Ok(report)
}

fn remove_pin(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err).with_context(|| format!("removing pin {}", path.display())),
    }
}
