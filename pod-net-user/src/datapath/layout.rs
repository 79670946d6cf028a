//! What a datapath is made of, as this build lays it out: its programs and
//! pinned maps; and pinned maps checked against this build's map table (a
//! map of another layout or size is refused by name before anything is
//! loaded, never dropped).

use anyhow::{Context as _, Result, bail};
use aya::maps::MapData;

use pod_net_common::{
    map_table::{self, MapSpec},
    program_names,
};

use crate::{
    datapath::pins::PinDir,
    error::{Capacity, LoadRefusal},
};

/// Every program in the object.
pub const PROGRAMS: [&str; 3] = [
    program_names::POD_EGRESS,
    program_names::UNDERLAY_INGRESS,
    program_names::UNDERLAY_XDP,
];

/// The programs attached at TC.
pub const TC_PROGRAMS: [&str; 2] = [program_names::POD_EGRESS, program_names::UNDERLAY_INGRESS];

/// The maps `load` pins, as this build lays them out.
pub fn pinned_maps() -> impl Iterator<Item = &'static MapSpec> {
    map_table::ALL.iter().filter(|map| map.pinned)
}

/// Refuses pinned maps whose layout differs from this build's.
pub fn check_pinned_layouts(pins: &PinDir) -> Result<()> {
    for map in pinned_maps() {
        let path = pins.map(map.name);
        if !path.exists() {
            continue;
        }
        let info = MapData::from_pin(&path)
            .and_then(|map| map.info())
            .with_context(|| format!("reading pinned map {}", path.display()))?;
        let entries_differ = !map.resizable && info.max_entries() != map.capacity;
        if info.key_size() as usize != map.key_size
            || info.value_size() as usize != map.value_size
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
                map.key_size,
                map.value_size,
                if map.resizable {
                    String::new()
                } else {
                    format!(" and {} entries", map.capacity)
                },
            );
        }
    }
    Ok(())
}

/// Refuses a capacity that differs from an existing map's: a map cannot
/// grow in place. `wanted` holds the capacities asked for.
pub fn check_pinned_capacity(pins: &PinDir, wanted: &[(Capacity, Option<u32>)]) -> Result<()> {
    for &(capacity, wanted) in wanted {
        let Some(wanted) = wanted else {
            continue;
        };
        let path = pins.map(capacity.map());
        if !path.exists() {
            continue;
        }
        let current = MapData::from_pin(&path)
            .and_then(|map| map.info())
            .with_context(|| format!("reading pinned map {}", path.display()))?
            .max_entries();
        if current != wanted {
            return Err(LoadRefusal::CapacityFixed {
                capacity,
                path,
                current,
                wanted,
            }
            .into());
        }
    }
    Ok(())
}
