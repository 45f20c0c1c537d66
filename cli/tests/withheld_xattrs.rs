//! Extended attributes mover never copies are reported, not dropped without a word (issue 20,
//! defect 12).

mod common;

use common::{mover, summary, text};

/// `cap_net_raw+ep` as `setcap` writes it: `vfs_cap_data` revision 2, effective flag set.
fn capability_net_raw() -> Vec<u8> {
    let mut value = Vec::new();
    value.extend_from_slice(&0x0200_0001u32.to_le_bytes());
    value.extend_from_slice(&(1u32 << 13).to_le_bytes()); // permitted: CAP_NET_RAW
    value.extend_from_slice(&0u32.to_le_bytes()); // inheritable
    value.extend_from_slice(&[0; 8]); // the upper 32 capabilities
    value
}

#[test]
fn file_capabilities_and_trusted_attributes_are_listed_as_not_preserved() {
    if !common::is_root() {
        eprintln!("skipped: setting `security.capability` and `trusted.*` needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("bin")).unwrap();
    std::fs::write(src.join("bin/ping"), b"#!/bin/true\n").unwrap();
    std::fs::write(src.join("notes"), b"text").unwrap();
    let set = |path: &std::path::Path, name: &str, value: &[u8]| {
        rustix::fs::setxattr(path, name, value, rustix::fs::XattrFlags::empty())
            .unwrap_or_else(|e| panic!("setxattr {name} on {}: {e}", path.display()));
    };
    set(&src.join("bin/ping"), "security.capability", &capability_net_raw());
    set(&src.join("notes"), "trusted.foo", b"bar");
    set(&src.join("notes"), "user.kept", b"yes");
    let dst = tmp.path().join("dst");

    let output = mover(&["copy", src.to_str().unwrap(), dst.to_str().unwrap(), "--output", "json"]);
    assert!(output.status.success(), "{}", text(&output));
    let summary = summary(&output);
    let not_preserved: Vec<&str> =
        summary["not_preserved"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(
        not_preserved.iter().any(|what| what.contains("security.capability") && what.contains("`bin/ping`")),
        "{not_preserved:?}"
    );
    assert!(
        not_preserved.iter().any(|what| what.contains("trusted.foo") && what.contains("`notes`")),
        "{not_preserved:?}"
    );
    // Still never copied; the user attribute is.
    let mut buffer = [0u8; 64];
    assert!(rustix::fs::getxattr(dst.join("bin/ping"), "security.capability", &mut buffer[..]).is_err());
    assert!(rustix::fs::getxattr(dst.join("notes"), "trusted.foo", &mut buffer[..]).is_err());
    assert_eq!(rustix::fs::getxattr(dst.join("notes"), "user.kept", &mut buffer[..]).unwrap(), 3);

    // On the terminal's stream: a warning naming the path, on every run (a no-change run too).
    let output = mover(&["copy", src.to_str().unwrap(), dst.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.lines().any(|line| line.starts_with("warning: ")
            && line.contains("security.capability")
            && line.contains("`bin/ping`")),
        "{}",
        text(&output)
    );
    assert!(
        stderr
            .lines()
            .any(|line| line.starts_with("warning: ") && line.contains("trusted.foo") && line.contains("`notes`")),
        "{}",
        text(&output)
    );
}
