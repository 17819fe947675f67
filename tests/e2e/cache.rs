//! The compiled guest is cached on disk: reused while valid and private,
//! replaced when corrupt, ignored when others could write it.

use crate::support::{Demo, peerhost, text};
use std::path::Path;
use std::process::Output;

fn ping(demo: &Demo, cache: &Path) -> Output {
    let out = peerhost()
        .args(["call", "--dir"])
        .arg(demo.dir())
        .args(["alice", "ping"])
        .env("PEERHOST_CACHE_DIR", cache)
        .env("RUST_LOG", "peerhost=info")
        .output()
        .expect("run peerhost");
    assert_eq!(text(&out).0.trim(), "\"pong\"", "{:?}", text(&out));
    out
}

fn artifacts(cache: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(cache)
        .map(|entries| entries.map(|e| e.expect("entry").path()).collect())
        .unwrap_or_default()
}

#[test]
fn the_compiled_guest_is_cached_and_a_bad_cache_is_never_trusted() {
    let demo = Demo::new();
    let cache = demo.tmp.path().join("cache");

    let first = ping(&demo, &cache);
    assert!(text(&first).1.contains("compiled the guest component"));
    let files = artifacts(&cache);
    assert_eq!(files.len(), 1, "{files:?}");
    let artifact = files[0].clone();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&cache), 0o700);
        assert_eq!(mode(&artifact), 0o600);
    }

    let second = ping(&demo, &cache);
    assert!(
        text(&second)
            .1
            .contains("loaded the compiled guest component"),
        "{:?}",
        text(&second)
    );

    // A corrupt artifact is refused by wasmtime, removed and rebuilt.
    std::fs::write(&artifact, b"not native code").expect("corrupt");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&artifact, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let third = ping(&demo, &cache);
    assert!(
        text(&third).1.contains("ignoring the cached"),
        "{:?}",
        text(&third)
    );
    assert!(std::fs::metadata(&artifact).expect("rebuilt").len() > 1 << 20);

    // A cache others may write is not used at all.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let shared = ping(&demo, &cache);
        assert!(
            text(&shared).1.contains("writable by group or others"),
            "{:?}",
            text(&shared)
        );
        assert!(!text(&shared).1.contains("loaded the compiled"));
    }
}
