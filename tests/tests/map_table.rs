//! The built eBPF object defines exactly the maps of the one table in
//! `pod_net_common::map_table`, with its names, key and value sizes and
//! default capacities. No root needed: this reads the object file.
use std::collections::BTreeMap;

use aya_obj::Object;
use pod_net_common::map_table;

#[test]
fn the_objects_maps_are_the_tables() {
    let object = Object::parse(pod_net::ebpf_object()).expect("parse the embedded object");
    // Data sections (.rodata, .bss) are maps to libbpf too; they are not ours.
    let built: BTreeMap<&str, (u32, u32, u32)> = object
        .maps
        .iter()
        .filter(|(name, _)| !name.starts_with('.'))
        .map(|(name, map)| {
            (
                name.as_str(),
                (map.key_size(), map.value_size(), map.max_entries()),
            )
        })
        .collect();
    let table: BTreeMap<&str, (u32, u32, u32)> = map_table::ALL
        .iter()
        .map(|map| {
            (
                map.name,
                (
                    u32::try_from(map.key_size).unwrap(),
                    u32::try_from(map.value_size).unwrap(),
                    map.capacity,
                ),
            )
        })
        .collect();
    assert_eq!(built, table);
}
