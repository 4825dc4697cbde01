//! Unit tests: snapshot names and fork settings merging.

use super::*;

#[test]
fn names() {
    assert!(validate_snapshot_name("prepared-1.0_x").is_ok());
    for bad in ["", ".hidden", "a/b", "with space", &"x".repeat(65)] {
        assert!(validate_snapshot_name(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn settings_merge() {
    let common = ForkSettings {
        limits: Limits {
            memory_bytes: Some(1 << 30),
            cpus: Some(1.0),
            pids: None,
            disk_bytes: None,
        },
        timeout: Some(Duration::from_secs(60)),
        env: [("A".into(), "1".into()), ("B".into(), "1".into())].into(),
        metadata: BTreeMap::new(),
    };
    let own = ForkSettings {
        limits: Limits {
            cpus: Some(0.5),
            ..Default::default()
        },
        env: [("B".into(), "2".into())].into(),
        ..Default::default()
    };
    let m = own.over(&common);
    assert_eq!(m.limits.memory_bytes, Some(1 << 30));
    assert_eq!(m.limits.cpus, Some(0.5));
    assert_eq!(m.timeout, Some(Duration::from_secs(60)));
    assert_eq!(m.env["A"], "1");
    assert_eq!(m.env["B"], "2");
}
