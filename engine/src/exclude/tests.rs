use proptest::prelude::*;

use super::*;

fn excluded(pattern: &str, path: &str, is_dir: bool) -> bool {
    Excludes::new(&[pattern]).unwrap().excludes(path.as_bytes(), || is_dir)
}

#[test]
fn rsync_rules_for_anchoring_slashes_and_stars() {
    // (pattern, path, is a directory, excluded)
    let cases = [
        // A name without `/` matches the last name at any depth.
        ("cache", "cache", true, true),
        ("cache", "a/b/cache", false, true),
        ("cache", "a/cache/b", false, false),
        ("*.log", "x.log", false, true),
        ("*.log", "a/b/x.log", false, true),
        ("*.log", "a.log/x", false, false),
        // Anchored at the root.
        ("/cache", "cache", true, true),
        ("/cache", "a/cache", true, false),
        ("/a/*.log", "a/x.log", false, true),
        ("/a/*.log", "b/a/x.log", false, false),
        // Directories only.
        ("tmp/", "tmp", true, true),
        ("tmp/", "tmp", false, false),
        ("tmp/", "a/tmp", true, true),
        // An inner `/`: as many trailing names as the pattern has.
        ("a/b", "a/b", false, true),
        ("a/b", "x/a/b", false, true),
        ("a/b", "xa/b", false, false),
        ("a/*", "x/a/y", false, true),
        ("a/*", "a", true, false),
        ("b/*", "a/b/c/d", false, false),
        // `*` never crosses `/`; `**` does.
        ("a*", "ab/c", false, false),
        ("a**", "x/ab/c", false, true),
        ("a/**/foo", "a/b/c/foo", false, true),
        ("a/**/foo", "a/foo", false, false),
        ("a/**/foo", "z/a/b/foo", false, true),
        ("**/foo", "foo", false, true),
        ("**/foo", "x/y/foo", false, true),
        ("/a/**", "a/b/c", false, true),
        ("/a/**", "a", true, false),
        ("/a/***", "a", true, true),
        ("/a/***", "a/b", false, true),
        ("/a/***", "a", false, false),
        // `?` and classes never match `/`.
        ("a?b", "a/b", false, false),
        ("a?b", "axb", false, true),
        ("a[/]b", "a/b", false, false),
        ("[!a]*", "b", false, true),
        ("[^a]*", "abc", false, false),
        ("[]x]", "]", false, true),
        ("[a-c]", "b", false, true),
        ("[a-c]", "d", false, false),
        ("*[[:digit:]]", "v2", false, true),
        ("*[[:digit:]]", "vv", false, false),
        ("[[:x]", "[", false, true),
        ("[[:x]", ":", false, true),
        // Escapes in wild patterns; a plain one compares its backslash too.
        ("\\*x*", "*xy", false, true),
        ("\\*x*", "axy", false, false),
        ("a\\b", "ab", false, false),
        ("a\\b", "a\\b", false, true),
    ];
    for (pattern, path, is_dir, expected) in cases {
        assert_eq!(excluded(pattern, path, is_dir), expected, "pattern `{pattern}` on `{path}` (dir: {is_dir})");
    }
}

#[test]
fn patterns_and_names_are_bytes() {
    let excludes = Excludes::new(&[&b"caf\xe9*"[..]]).unwrap();
    assert!(excludes.excludes(b"d/caf\xe9-old", || false));
    assert!(!excludes.excludes(b"d/cafe", || false));
}

#[test]
fn the_type_is_asked_only_when_a_match_depends_on_it() {
    let excludes = Excludes::new(&["*.log", "tmp/"]).unwrap();
    assert!(excludes.excludes(b"a.log", || panic!("a plain match needs no type")));
    assert!(!excludes.excludes(b"b.txt", || panic!("no match needs no type")));
    assert!(excludes.excludes(b"tmp", || true));
}

#[test]
fn bad_patterns_are_refused_with_the_reason() {
    for (pattern, reason) in [
        ("", "empty"),
        ("/", "empty"),
        ("//", "empty"),
        ("a[bc", "not closed"),
        ("[[:nope:]]", "unknown character class"),
        ("*a\\", "lone"),
        ("a\0b", "NUL"),
    ] {
        let error = Excludes::new(&[pattern]).unwrap_err().to_string();
        assert!(error.contains(reason), "`{pattern}`: {error}");
    }
    let many = vec!["x"; MAX_EXCLUDES + 1];
    assert_eq!(Excludes::new(&many).unwrap_err(), ExcludeError::TooMany { count: MAX_EXCLUDES + 1 });
    let long = "x".repeat(MAX_EXCLUDE_LEN + 1);
    assert!(
        matches!(Excludes::new(&[long]).unwrap_err(), ExcludeError::TooLong { len, .. } if len == MAX_EXCLUDE_LEN + 1)
    );
}

#[test]
fn stars_cannot_blow_up() {
    let pattern = "*a".repeat(2000);
    let excludes = Excludes::new(&[pattern]).unwrap();
    let path = "a".repeat(1999) + "b";
    let started = std::time::Instant::now();
    assert!(!excludes.excludes(path.as_bytes(), || false));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

/// rsync's `dowild` (wildmatch.c), transcribed: the reference the matcher is checked against.
mod reference {
    const ABORT_ALL: i32 = -1;
    const ABORT_TO_STARSTAR: i32 = -2;

    pub fn dowild(p: &[u8], text: &[u8]) -> i32 {
        let at = |s: &[u8], i: usize| s.get(i).copied().unwrap_or(0);
        let (mut pi, mut ti) = (0, 0);
        while at(p, pi) != 0 {
            let mut p_ch = at(p, pi);
            let t_ch = at(text, ti);
            if t_ch == 0 && p_ch != b'*' {
                return ABORT_ALL;
            }
            match p_ch {
                b'?' => {
                    if t_ch == b'/' {
                        return 0;
                    }
                }
                b'*' => {
                    pi += 1;
                    let special = at(p, pi) == b'*';
                    while at(p, pi) == b'*' {
                        pi += 1;
                    }
                    if at(p, pi) == 0 {
                        return i32::from(special || !text[ti..].contains(&b'/'));
                    }
                    let mut ti2 = ti;
                    loop {
                        let t = at(text, ti2);
                        if t == 0 {
                            break;
                        }
                        let matched = dowild(&p[pi..], &text[ti2..]);
                        if matched != 0 {
                            if !special || matched != ABORT_TO_STARSTAR {
                                return matched;
                            }
                        } else if !special && t == b'/' {
                            return ABORT_TO_STARSTAR;
                        }
                        ti2 += 1;
                    }
                    return ABORT_ALL;
                }
                b'[' => {
                    pi += 1;
                    p_ch = at(p, pi);
                    if p_ch == b'^' {
                        p_ch = b'!';
                    }
                    let special = p_ch == b'!';
                    if special {
                        pi += 1;
                        p_ch = at(p, pi);
                    }
                    let mut prev_ch = 0u8;
                    let mut matched = false;
                    loop {
                        if p_ch == 0 {
                            return ABORT_ALL;
                        }
                        if p_ch == b'\\' {
                            pi += 1;
                            p_ch = at(p, pi);
                            if p_ch == 0 {
                                return ABORT_ALL;
                            }
                            matched |= t_ch == p_ch;
                        } else if p_ch == b'-' && prev_ch != 0 && at(p, pi + 1) != 0 && at(p, pi + 1) != b']' {
                            pi += 1;
                            p_ch = at(p, pi);
                            if p_ch == b'\\' {
                                pi += 1;
                                p_ch = at(p, pi);
                                if p_ch == 0 {
                                    return ABORT_ALL;
                                }
                            }
                            matched |= t_ch <= p_ch && t_ch >= prev_ch;
                            p_ch = 0;
                        } else {
                            // (POSIX classes are left to the table test.)
                            matched |= t_ch == p_ch;
                        }
                        prev_ch = p_ch;
                        pi += 1;
                        p_ch = at(p, pi);
                        if p_ch == b']' {
                            break;
                        }
                    }
                    if matched == special || t_ch == b'/' {
                        return 0;
                    }
                }
                _ => {
                    if p_ch == b'\\' {
                        pi += 1;
                        p_ch = at(p, pi);
                    }
                    if t_ch != p_ch {
                        return 0;
                    }
                }
            }
            pi += 1;
            ti += 1;
        }
        i32::from(at(text, ti) == 0)
    }
}

proptest! {
    /// The dynamic programme agrees with rsync's own backtracking matcher.
    #[test]
    fn the_matcher_agrees_with_rsyncs_wildmatch(
        pattern in proptest::collection::vec(prop::sample::select(b"ab/*?[]!-\\".to_vec()), 1..9),
        text in proptest::collection::vec(prop::sample::select(b"ab/-]".to_vec()), 0..9),
    ) {
        let Ok(tokens) = tokenize(&pattern) else { return Ok(()) };
        prop_assume!(!pattern.windows(2).any(|w| w == b"[:"));
        let ours = wildmatch(&tokens, &text, |j| j == 0);
        let theirs = reference::dowild(&pattern, &text) == 1;
        prop_assert_eq!(ours, theirs, "pattern {:?} text {:?}", String::from_utf8_lossy(&pattern), String::from_utf8_lossy(&text));
    }
}

/// Real rsync as the oracle, when installed: the entries `rsync -a --exclude P --dry-run`
/// would transfer are the entries the scan yields with the same pattern.
#[test]
fn the_scan_leaves_out_what_rsync_leaves_out() {
    let Ok(output) = std::process::Command::new("rsync").arg("--version").output() else {
        eprintln!("skipped: rsync is not installed");
        return;
    };
    assert!(output.status.success());
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    for dir in ["a/b", "a/cache/x", "cache/y", "tmp", "a/tmp", "a/b/c/deep", "logs"] {
        std::fs::create_dir_all(src.join(dir)).unwrap();
    }
    for file in [
        "foo",
        "a/foo",
        "a/b/foo",
        "a/b/tmp",
        "x.log",
        "a/b/y.log",
        "cache/y/z",
        "a/cache/x/z",
        "tmp/t",
        "a/b/c/deep/foo",
        "logs/v2",
    ] {
        std::fs::write(src.join(file), b"").unwrap();
    }
    let patterns = [
        "foo",
        "/foo",
        "tmp/",
        "/cache",
        "cache",
        "*.log",
        "a/b",
        "a/**/foo",
        "**/foo",
        "/a/**",
        "/a/b/***",
        "b/*",
        "a*",
        "[!a]*",
        "*[[:digit:]]",
        "?",
        "a/*/foo",
        "deep/",
        "/a/b/c",
    ];
    for pattern in patterns {
        let output = std::process::Command::new("rsync")
            .args(["-a", "--dry-run", "--out-format=%n", "--exclude", pattern])
            .arg(format!("{}/", src.display()))
            .arg(tmp.path().join("dst"))
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let mut theirs: Vec<String> = String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .filter(|line| *line != "./")
            .map(|line| line.trim_end_matches('/').to_owned())
            .collect();
        theirs.sort();
        let root = crate::confine::open_root(&src).unwrap();
        let excludes = [pattern.as_bytes().to_vec()];
        let options = crate::scan::ScanOptions {
            excludes: &excludes,
            mounts: crate::confine::Mounts::Stay,
            xattrs: crate::meta::XattrPolicy::default(),
        };
        let mut ours: Vec<String> = crate::scan::Scanner::new(&root, options)
            .unwrap()
            .map(|item| match item {
                crate::scan::Scanned::Entry(entry) => String::from_utf8(entry.path).unwrap(),
                crate::scan::Scanned::Problem(problem) => panic!("{}: {}", problem.path, problem.error),
                crate::scan::Scanned::MountPoint(path) => panic!("a mount point in a temporary tree: {path:?}"),
            })
            .collect();
        ours.sort();
        assert_eq!(ours, theirs, "--exclude '{pattern}'");
    }
}
