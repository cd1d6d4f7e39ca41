//! Table of vdevs, each expected value worked out by hand from
//! xen-vbd-interface(7): xvd short `(202<<8)|(disk<<4)|part`, xvd extended
//! `(1<<28)|(disk<<8)|part`, sd `(8<<8)|(disk<<4)|part`, hd
//! `((disk<2 ? 3 : 22)<<8)|((disk&1)<<6)|part`.

use super::*;

/// `(input, device id, canonical name, disk, partition)`.
const VALID: &[(&str, u32, &str, u32, u32)] = &[
    // xvd, short form: 202 << 8 = 51712, disk << 4, partition.
    ("xvda", 51712, "xvda", 0, 0),
    ("xvdb", 51728, "xvdb", 1, 0),
    ("xvda1", 51713, "xvda1", 0, 1),
    ("xvdb2", 51730, "xvdb2", 1, 2),
    ("xvda15", 51727, "xvda15", 0, 15),
    ("xvdp", 51952, "xvdp", 15, 0),
    ("xvdp15", 51967, "xvdp15", 15, 15),
    // xvd, extended form: 1 << 28 = 268435456, disk << 8, partition.
    ("xvda16", 268435472, "xvda16", 0, 16),
    ("xvda255", 268435711, "xvda255", 0, 255),
    ("xvdq", 268439552, "xvdq", 16, 0),
    ("xvdq1", 268439553, "xvdq1", 16, 1),
    ("xvdz", 268441856, "xvdz", 25, 0),
    ("xvdaa", 268442112, "xvdaa", 26, 0),
    ("xvdzz", 268614912, "xvdzz", 701, 0),
    ("xvdaaa", 268615168, "xvdaaa", 702, 0),
    ("xvdtq37", 268572709, "xvdtq37", 536, 37),
    ("xvdbgqcv", 536870656, "xvdbgqcv", 1048575, 0),
    ("xvdbgqcv255", 536870911, "xvdbgqcv255", 1048575, 255),
    // d<disk>p<partition>: the same encodings, numbers in decimal.
    ("d0p0", 51712, "xvda", 0, 0),
    ("d1p2", 51730, "xvdb2", 1, 2),
    ("d15p15", 51967, "xvdp15", 15, 15),
    ("d16p0", 268439552, "xvdq", 16, 0),
    ("d0p16", 268435472, "xvda16", 0, 16),
    ("d536p37", 268572709, "xvdtq37", 536, 37),
    ("d1048575p255", 536870911, "xvdbgqcv255", 1048575, 255),
    // hd: disks 0-1 on major 3 (768), disks 2-3 on major 22 (5632), disk bit at 6.
    ("hda", 768, "hda", 0, 0),
    ("hda1", 769, "hda1", 0, 1),
    ("hda63", 831, "hda63", 0, 63),
    ("hdb", 832, "hdb", 1, 0),
    ("hdc", 5632, "hdc", 2, 0),
    ("hdc2", 5634, "hdc2", 2, 2),
    ("hdd", 5696, "hdd", 3, 0),
    ("hdd63", 5759, "hdd63", 3, 63),
    // sd: major 8 (2048), disk << 4.
    ("sda", 2048, "sda", 0, 0),
    ("sda15", 2063, "sda15", 0, 15),
    ("sdb3", 2067, "sdb3", 1, 3),
    ("sdp", 2288, "sdp", 15, 0),
    ("sdp15", 2303, "sdp15", 15, 15),
    // Plain device ids, decimal or hex, decoded back to their names.
    ("51712", 51712, "xvda", 0, 0),
    ("0xca00", 51712, "xvda", 0, 0),
    ("0xCA01", 51713, "xvda1", 0, 1),
    ("51730", 51730, "xvdb2", 1, 2),
    ("268439552", 268439552, "xvdq", 16, 0),
    ("268572709", 268572709, "xvdtq37", 536, 37),
    ("768", 768, "hda", 0, 0),
    ("5634", 5634, "hdc2", 2, 2),
    ("2067", 2067, "sdb3", 1, 3),
];

/// `(input, a fragment the error message must contain)`.
const INVALID: &[(&str, &str)] = &[
    ("", "empty vdev name"),
    ("xvd", "no disk letter"),
    ("hd", "no disk letter"),
    ("sd", "no disk letter"),
    ("xvd1", "no disk letter"),
    ("xvda+1", "not a partition number"),
    ("xvda0", "partition 0 is out of range"),
    ("xvda01", "not a partition number"),
    ("xvda256", "partition 256 is out of range"),
    ("xvdA", "no disk letter"),
    ("xvda-", "not a partition number"),
    ("xvda 1", "not a partition number"),
    ("xvdbgqcw", "out of range"),
    ("xvdaaaaaaaaaaaaa", "out of range"),
    ("hde", "out of range"),
    ("hda64", "partition 64 is out of range"),
    ("hdc0", "partition 0 is out of range"),
    ("sdq", "out of range"),
    ("sda16", "partition 16 is out of range"),
    ("d0", "has no partition"),
    ("d010p0", "not a d<disk>p<partition> name"),
    ("d0x1p0", "not a d<disk>p<partition> name"),
    ("d0p", "not a d<disk>p<partition> name"),
    ("d1048576p0", "out of range"),
    ("d0p256", "out of range"),
    ("d-1p0", "is not a vdev"),
    ("vda", "is not a vdev"),
    ("XVDA", "is not a vdev"),
    ("0123", "not a device id"),
    ("0x", "not a device id"),
    ("0x+ca00", "not a device id"),
    ("4294967296", "not a device id"),
    ("0", "not a xen-vbd-interface(7) encoding"),
    ("12345", "not a xen-vbd-interface(7) encoding"),
    ("268435456", "extended encoding for disk 0 partition 0"),
    ("536870912", "reserved"),
    // Major 3 minor 155 would be hdc27, but hdc is on major 22 (id 5659).
    ("923", "not canonical"),
    ("0x39b", "id 5659"),
    ("1023", "would be hdd63"),
];

#[test]
fn valid_names_map_to_hand_computed_ids() {
    for &(input, id, name, disk, partition) in VALID {
        let vdev = Vdev::parse(input).unwrap_or_else(|e| panic!("{input:?} rejected: {e}"));
        assert_eq!(vdev.device_id(), id, "device id of {input:?}");
        assert_eq!(vdev.canonical_name(), name, "canonical name of {input:?}");
        assert_eq!(
            (vdev.disk, vdev.partition),
            (disk, partition),
            "disk/partition of {input:?}"
        );
        let back = Vdev::from_device_id(id).unwrap_or_else(|e| panic!("id {id} rejected: {e}"));
        assert_eq!(back, vdev, "{input:?} does not round-trip through id {id}");
        assert_eq!(
            Vdev::parse(name).unwrap(),
            vdev,
            "canonical name {name:?} reparses"
        );
    }
}

#[test]
fn invalid_names_are_rejected_with_a_reason() {
    for &(input, fragment) in INVALID {
        match Vdev::parse(input) {
            Ok(vdev) => panic!("{input:?} accepted as {vdev:?} (id {})", vdev.device_id()),
            Err(VdevError::Invalid(message)) => assert!(
                message.contains(fragment),
                "{input:?}: message {message:?} lacks {fragment:?}"
            ),
        }
    }
}

#[test]
fn the_table_is_large_enough() {
    assert!(VALID.len() + INVALID.len() >= 60);
}

#[test]
fn every_short_xvd_id_round_trips() {
    for disk in 0..16 {
        for partition in 0..16 {
            let id = (202 << 8) | (disk << 4) | partition;
            let vdev = Vdev::from_device_id(id).unwrap();
            assert_eq!(Vdev::parse(&vdev.canonical_name()).unwrap().device_id(), id);
        }
    }
}

/// The property every decoded id must have: it encodes back to itself, and
/// its canonical name parses back to the same vdev. An error is also fine;
/// what must never happen is an id that decodes to a vdev with another id,
/// since an attachment observed under it could never be matched.
fn maps_back_to_itself(id: u32) -> Result<Option<Vdev>, String> {
    let Ok(vdev) = Vdev::from_device_id(id) else {
        return Ok(None);
    };
    if vdev.device_id() != id {
        return Err(format!(
            "id {id} decodes to {vdev:?}, whose id is {}",
            vdev.device_id()
        ));
    }
    let name = vdev.canonical_name();
    match Vdev::parse(&name) {
        Ok(back) if back == vdev => Ok(Some(vdev)),
        other => Err(format!(
            "id {id}: canonical name {name:?} parses to {other:?}, not {vdev:?}"
        )),
    }
}

#[test]
fn every_16_bit_id_maps_back_to_itself() {
    let mut accepted = 0;
    for id in 0..=0xFFFF {
        if maps_back_to_itself(id)
            .unwrap_or_else(|e| panic!("{e}"))
            .is_some()
        {
            accepted += 1;
        }
    }
    // xvd short (202:0-255), sd (8:0-255), and hd: 64 minors for each of
    // hda, hdb (major 3) and hdc, hdd (major 22). Nothing else.
    assert_eq!(accepted, 256 + 256 + 4 * 64);
}

#[test]
fn hd_ids_on_the_wrong_major_are_refused_with_the_canonical_id() {
    // 923 is major 3 minor 155: hdc27 by its minor, but hdc is on major 22.
    let Err(VdevError::Invalid(message)) = Vdev::from_device_id(923) else {
        panic!("923 accepted");
    };
    assert!(message.contains("hdc27"), "{message}");
    assert!(message.contains("5659"), "{message}");
    assert_eq!(Vdev::parse("hdc27").unwrap().device_id(), 5659);
    // Every minor from 128 on major 3 would be hdc or hdd.
    for minor in 128..=255 {
        assert!(Vdev::from_device_id((3 << 8) | minor).is_err(), "3:{minor}");
    }
    // And major 22 holds only hdc and hdd.
    for minor in 128..=255 {
        assert!(
            Vdev::from_device_id((22 << 8) | minor).is_err(),
            "22:{minor}"
        );
    }
}

fn extended(disk: u32, partition: u32) -> u32 {
    (1 << 28) | (disk << 8) | partition
}

/// Disks whose every partition is checked: the short/extended boundary, the
/// letter-count boundaries (z/aa at 26, zz/aaa at 702, zzz/aaaa at 18278,
/// zzzz/aaaaa at 475254) and the last disks.
const FULLY_CHECKED_DISKS: &[std::ops::Range<u32>] = &[
    0..800,
    18_200..18_400,
    475_200..475_300,
    (1 << 20) - 256..1 << 20,
];

#[test]
fn every_partition_of_boundary_disks_maps_back_to_itself() {
    for disks in FULLY_CHECKED_DISKS {
        for disk in disks.clone() {
            for partition in 0..=255 {
                let id = extended(disk, partition);
                let decoded = maps_back_to_itself(id).unwrap_or_else(|e| panic!("{e}"));
                // The short form owns disks 0-15 with partitions 0-15.
                let short = disk <= 15 && partition <= 15;
                assert_eq!(decoded.is_none(), short, "id {id}: {decoded:?}");
            }
        }
    }
}

#[test]
fn every_extended_disk_maps_back_to_itself() {
    // Every disk number once, with a partition that cycles through all 256,
    // so each disk and each partition is seen; the boundary test above
    // covers every pair where the letters change length.
    for disk in 16..1 << 20 {
        let id = extended(disk, (disk * 7) % 256);
        assert!(
            maps_back_to_itself(id)
                .unwrap_or_else(|e| panic!("{e}"))
                .is_some(),
            "id {id} refused"
        );
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]

    /// Any extended disk and partition: decoded to itself (or refused for
    /// the pairs the short form owns).
    #[test]
    fn extended_ids_map_back_to_themselves(disk in 0u32..1 << 20, partition in 0u32..=255) {
        let id = extended(disk, partition);
        let decoded = maps_back_to_itself(id).map_err(proptest::test_runner::TestCaseError::fail)?;
        proptest::prop_assert_eq!(decoded.is_none(), disk <= 15 && partition <= 15);
    }

    /// Any 32-bit number at all: refused, or decoded to itself.
    #[test]
    fn any_id_maps_back_to_itself_or_is_refused(id in proptest::prelude::any::<u32>()) {
        maps_back_to_itself(id).map_err(proptest::test_runner::TestCaseError::fail)?;
    }
}
