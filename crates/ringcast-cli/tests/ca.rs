//! `ringcast ca` as an operator runs it: the real binary in a temporary directory.

use ringcast_cluster::tls::ClusterTls;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};

fn ringcast(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ringcast: {e}"))
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or_else(|| panic!("killed by a signal: {out:?}"))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn init_then_issue_writes_a_usable_ca_and_node_certificate_with_private_keys() {
    let tmp = tempdir();
    let dir = tmp.path();
    let init = ringcast(dir, &["ca", "init"]);
    assert_eq!(code(&init), 0, "{}", stderr(&init));
    assert!(stdout(&init).contains("ringcast-ca/ca.pem"), "{}", stdout(&init));
    let issue = ringcast(dir, &["ca", "issue", "node-1"]);
    assert_eq!(code(&issue), 0, "{}", stderr(&issue));
    assert!(stdout(&issue).contains("node-1"), "{}", stdout(&issue));

    let ca = dir.join("ringcast-ca");
    assert_eq!(mode(&ca.join("ca.key")), 0o600);
    assert_eq!(mode(&ca.join("node-1.key")), 0o600);
    assert_eq!(mode(&ca), 0o700);
    let tls = ClusterTls::load(&ca.join("ca.pem"), &ca.join("node-1.pem"), &ca.join("node-1.key"))
        .unwrap_or_else(|e| panic!("the issued certificate does not load: {e}"));
    assert_eq!(tls.node_id().as_str(), "node-1");
}

#[test]
fn json_output_is_one_line_with_the_written_paths() {
    let tmp = tempdir();
    let dir = tmp.path();
    let init = ringcast(dir, &["--json", "ca", "init", "--dir", "pki"]);
    assert_eq!(code(&init), 0, "{}", stderr(&init));
    let text = stdout(&init);
    assert_eq!(text.lines().count(), 1, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(v["ca_cert"], "pki/ca.pem");
    assert_eq!(v["ca_key"], "pki/ca.key");

    // --json is accepted after the subcommand too.
    let issue = ringcast(dir, &["ca", "issue", "node-2.eu", "--ca-dir", "pki", "--out", "certs", "--json"]);
    assert_eq!(code(&issue), 0, "{}", stderr(&issue));
    let text = stdout(&issue);
    assert_eq!(text.lines().count(), 1, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(v["node_id"], "node-2.eu");
    assert_eq!(v["cert"], "certs/node-2.eu.pem");
    assert_eq!(v["key"], "certs/node-2.eu.key");
    assert_eq!(v["ca_cert"], "pki/ca.pem");
    assert!(dir.join("certs/node-2.eu.key").exists());
}

#[test]
fn invalid_node_ids_exit_64_and_say_why() {
    let tmp = tempdir();
    let dir = tmp.path();
    assert_eq!(code(&ringcast(dir, &["ca", "init"])), 0);
    for (bad, why) in [("Node-1", "character 'N'"), ("node 1", "character ' '"), ("123", "character '1'")] {
        let out = ringcast(dir, &["ca", "issue", bad]);
        assert_eq!(code(&out), 64, "{bad}: {}", stderr(&out));
        assert!(stderr(&out).contains(why), "{bad}: {}", stderr(&out));
        assert!(stdout(&out).is_empty(), "{bad}: {}", stdout(&out));
    }
    let files: Vec<_> = std::fs::read_dir(dir.join("ringcast-ca"))
        .unwrap_or_else(|e| panic!("{e}"))
        .map(|e| e.map(|e| e.file_name()).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    assert_eq!(files.len(), 2, "nothing but the CA was written: {files:?}");
}

#[test]
fn existing_files_are_kept_unless_forced() {
    let tmp = tempdir();
    let dir = tmp.path();
    assert_eq!(code(&ringcast(dir, &["ca", "init"])), 0);
    let ca_key = std::fs::read(dir.join("ringcast-ca/ca.key")).unwrap_or_else(|e| panic!("{e}"));

    let again = ringcast(dir, &["ca", "init"]);
    assert_eq!(code(&again), 1, "{}", stderr(&again));
    assert!(stderr(&again).contains("already exists") && stderr(&again).contains("--force"), "{}", stderr(&again));
    assert_eq!(std::fs::read(dir.join("ringcast-ca/ca.key")).unwrap_or_else(|e| panic!("{e}")), ca_key);

    assert_eq!(code(&ringcast(dir, &["ca", "issue", "node-1"])), 0);
    let again = ringcast(dir, &["ca", "issue", "node-1"]);
    assert_eq!(code(&again), 1, "{}", stderr(&again));
    assert!(stderr(&again).contains("node-1.pem already exists"), "{}", stderr(&again));

    assert_eq!(code(&ringcast(dir, &["ca", "issue", "node-1", "--force"])), 0);
    assert_eq!(code(&ringcast(dir, &["ca", "init", "--force"])), 0);
    assert_ne!(std::fs::read(dir.join("ringcast-ca/ca.key")).unwrap_or_else(|e| panic!("{e}")), ca_key);
    assert_eq!(mode(&dir.join("ringcast-ca/ca.key")), 0o600);
}

#[test]
fn issuing_without_a_ca_fails_with_the_command_that_fixes_it() {
    let tmp = tempdir();
    let out = ringcast(tmp.path(), &["ca", "issue", "node-1", "--ca-dir", "missing"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("ringcast ca init --dir missing"), "{}", stderr(&out));
}

#[test]
fn bad_command_lines_exit_64_and_help_exits_0() {
    let tmp = tempdir();
    assert_eq!(code(&ringcast(tmp.path(), &["ca", "frobnicate"])), 64);
    assert_eq!(code(&ringcast(tmp.path(), &["ca", "issue"])), 64);
    assert_eq!(code(&ringcast(tmp.path(), &[])), 64);
    let help = ringcast(tmp.path(), &["ca", "--help"]);
    assert_eq!(code(&help), 0);
    assert!(stdout(&help).contains("issue"), "{}", stdout(&help));
}

#[test]
fn init_if_missing_keeps_an_existing_ca_and_creates_a_missing_one() {
    let tmp = tempdir();
    let dir = tmp.path();
    let first = ringcast(dir, &["--json", "ca", "init", "--dir", "ca", "--if-missing"]);
    assert_eq!(code(&first), 0, "{}", stderr(&first));
    assert!(stdout(&first).contains("\"created\":true"), "{}", stdout(&first));
    let before = std::fs::read(dir.join("ca/ca.key")).unwrap_or_else(|e| panic!("{e}"));
    let again = ringcast(dir, &["--json", "ca", "init", "--dir", "ca", "--if-missing"]);
    assert_eq!(code(&again), 0, "{}", stderr(&again));
    assert!(stdout(&again).contains("\"created\":false"), "{}", stdout(&again));
    let after = std::fs::read(dir.join("ca/ca.key")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(before, after, "--if-missing must not replace the CA");
    let plain = ringcast(dir, &["ca", "init", "--dir", "ca"]);
    assert_eq!(code(&plain), 1, "without --if-missing an existing CA is an error");
}

#[test]
fn health_fails_with_status_1_when_nothing_listens() {
    let tmp = tempdir();
    // Port 1 on loopback: nothing listens there, so the connection is refused at once.
    let out = ringcast(tmp.path(), &["health", "--node", "http://127.0.0.1:1"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot reach node"), "{}", stderr(&out));
}
