//! The value types' grammar: each parses what an operator writes and prints
//! back the same canonical text.

use super::*;

#[test]
fn sizes_are_exact_and_round_up_to_sectors() {
    let bytes = |text: &str| text.parse::<Size>().map(Size::bytes);
    assert_eq!(bytes("1MiB"), Ok(1_048_576));
    assert_eq!(bytes("8GiB"), Ok(8 << 30));
    assert_eq!(bytes("2 TiB"), Ok(2 << 40));
    assert_eq!(bytes("1kB"), Ok(1024)); // 1000 bytes round up to two sectors
    assert_eq!(bytes("1MB"), Ok(1_000_448));
    assert_eq!(bytes("3GB"), Ok(3_000_000_000));
    assert_eq!(bytes("512"), Ok(512));
    assert_eq!(bytes("1"), Ok(512));
    assert_eq!(bytes("0B"), Ok(0));
    for bad in [
        "",
        "MiB",
        "1.5GiB",
        "-1MiB",
        "8 gib",
        "8GiBs",
        "99999999999TiB",
    ] {
        assert!(bad.parse::<Size>().is_err(), "{bad:?} accepted");
    }
}

#[test]
fn sizes_print_back_to_the_same_value() {
    for text in ["64MiB", "8GiB", "1536KiB", "512B", "3TiB"] {
        assert_eq!(text.parse::<Size>().unwrap().to_string(), text);
    }
    assert_eq!("1000B".parse::<Size>().unwrap().to_string(), "1KiB");
}

#[test]
fn expiries() {
    assert_eq!("never".parse(), Ok(Expiry::Never));
    assert_eq!("90m".parse(), Ok(Expiry::AfterCreation { seconds: 5400 }));
    assert_eq!("12h".parse(), Ok(Expiry::AfterCreation { seconds: 43_200 }));
    assert_eq!(
        "30d".parse(),
        Ok(Expiry::AfterCreation { seconds: 2_592_000 })
    );
    let at: Expiry = "2027-01-31T12:00:00+01:00".parse().unwrap();
    assert_eq!(at.to_string(), "2027-01-31T11:00:00Z");
    for bad in ["", "0d", "30 d", "d", "forever", "2027-01-31", "1y"] {
        assert!(bad.parse::<Expiry>().is_err(), "{bad:?} accepted");
    }
    assert_eq!(Expiry::AfterCreation { seconds: 5400 }.to_string(), "90m");
}

#[test]
fn sharing_levels_print_as_they_are_written() {
    for level in [Sharing::Exclusive, Sharing::SingleWriter, Sharing::Unsafe] {
        assert_eq!(serde_json::to_value(level).unwrap(), level.to_string());
    }
}

#[test]
fn sources_and_modes() {
    assert_eq!("vdisk:web".parse(), Ok(Source::Vdisk("web".into())));
    assert_eq!("phy:/dev/sr0".parse(), Ok(Source::Phy("/dev/sr0".into())));
    assert_eq!(
        "file:/srv/a,b.img".parse(),
        Ok(Source::File("/srv/a,b.img".into()))
    );
    for bad in ["web", "vdisk:", "phy:sda3", "file:rel.img", "tap:aio:/x"] {
        assert!(bad.parse::<Source>().is_err(), "{bad:?} accepted");
    }
    assert_eq!("ro".parse(), Ok(Mode::Read));
    assert_eq!("rw".parse(), Ok(Mode::Write));
    assert_eq!("w!".parse(), Ok(Mode::WriteShared));
    assert!("rw!".parse::<Mode>().is_err());
}

#[test]
fn formats_print_as_they_are_written() {
    for format in FORMATS {
        assert_eq!(serde_json::to_value(format).unwrap(), format.to_string());
        assert_eq!(format.name().parse(), Ok(format));
    }
    assert!(Format::default().is_raw());
    for bad in ["", "QCOW2", "vmdk", "aio", "vpc"] {
        assert!(bad.parse::<Format>().is_err(), "{bad:?} accepted");
    }
}
