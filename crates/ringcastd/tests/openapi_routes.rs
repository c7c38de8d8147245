//! Keeps `proto/openapi.yaml` in step with the router in `src/http.rs`: every registered
//! route is a path in the spec with the same methods, and every path in the spec is a
//! registered route. The error code enum of the spec must list `ErrorCode::ALL`.
//!
//! Both files are read as text and parsed with plain string handling (no YAML or Rust
//! parser), which is enough for the shapes they use: `.route("PATH", get(h))` calls on one
//! line, and two-space-indented YAML path keys under a top-level `paths:`.

use ringcast_proto::ErrorCode;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// HTTP methods an axum method router or an OpenAPI path item can name.
const METHODS: [&str; 7] = ["get", "post", "put", "delete", "patch", "head", "options"];

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Route path -> methods, from the `.route("...", get(..).post(..))` calls of http.rs.
fn registered_routes(source: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut routes = BTreeMap::new();
    for line in source.lines() {
        let Some(start) = line.find(".route(\"") else { continue };
        let rest = &line[start + ".route(\"".len()..];
        let end = rest.find('"').unwrap_or_else(|| panic!("http.rs: unterminated route literal in {line:?}"));
        let (path, handlers) = rest.split_at(end);
        let methods: BTreeSet<String> = METHODS
            .iter()
            .filter(|m| {
                handlers.match_indices(&format!("{m}(")).any(|(i, _)| {
                    let before = handlers[..i].chars().next_back();
                    !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                })
            })
            .map(|m| (*m).to_owned())
            .collect();
        assert!(!methods.is_empty(), "http.rs: no method router found on the line of route {path:?}: {line:?}");
        let previous = routes.insert(path.to_owned(), methods);
        assert!(previous.is_none(), "http.rs: route {path:?} is registered twice");
    }
    assert!(!routes.is_empty(), "http.rs: no `.route(\"...\"` calls found; has the router moved?");
    routes
}

/// The lines of the top-level `key:` block of a YAML document (without the key line).
fn top_level_block<'a>(yaml: &'a str, key: &str) -> Vec<&'a str> {
    let mut lines = yaml.lines().skip_while(|l| l.trim_end() != format!("{key}:"));
    assert!(lines.next().is_some(), "openapi.yaml: no top-level `{key}:` key");
    lines.take_while(|l| l.is_empty() || l.starts_with(' ') || l.starts_with('#')).collect()
}

/// Path -> methods, from the `paths:` section of openapi.yaml.
fn spec_paths(yaml: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut paths: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in top_level_block(yaml, "paths") {
        let indent = line.len() - line.trim_start().len();
        let Some(key) = line.trim().strip_suffix(':') else { continue };
        let key = key.trim_matches(|c| c == '"' || c == '\'');
        match indent {
            2 => {
                assert!(key.starts_with('/'), "openapi.yaml: path key {key:?} must start with '/'");
                let previous = paths.insert(key.to_owned(), BTreeSet::new());
                assert!(previous.is_none(), "openapi.yaml: path {key:?} appears twice");
                current = Some(key.to_owned());
            }
            4 if METHODS.contains(&key) => {
                let path = current.as_ref().unwrap_or_else(|| panic!("openapi.yaml: method {key:?} outside a path"));
                paths.entry(path.clone()).or_default().insert(key.to_owned());
            }
            _ => {}
        }
    }
    assert!(!paths.is_empty(), "openapi.yaml: the `paths:` section is empty");
    paths
}

#[test]
fn every_route_is_documented_and_every_documented_path_is_routed() {
    let routes = registered_routes(&read("src/http.rs"));
    let spec = spec_paths(&read("../../proto/openapi.yaml"));

    let undocumented: Vec<&String> = routes.keys().filter(|p| !spec.contains_key(*p)).collect();
    let unrouted: Vec<&String> = spec.keys().filter(|p| !routes.contains_key(*p)).collect();
    assert!(undocumented.is_empty(), "routes in src/http.rs missing from proto/openapi.yaml: {undocumented:?}");
    assert!(unrouted.is_empty(), "paths in proto/openapi.yaml that src/http.rs does not route: {unrouted:?}");

    for (path, methods) in &routes {
        assert_eq!(&spec[path], methods, "methods of {path}: proto/openapi.yaml (left) vs src/http.rs (right)");
    }
}

#[test]
fn error_code_enum_lists_every_error_code() {
    let yaml = read("../../proto/openapi.yaml");
    let schemas = top_level_block(&yaml, "components");
    let start = schemas
        .iter()
        .position(|l| l.trim() == "ErrorCode:")
        .unwrap_or_else(|| panic!("openapi.yaml: no components.schemas.ErrorCode"));
    let documented: Vec<&str> = schemas[start + 1..]
        .iter()
        .skip_while(|l| l.trim() != "enum:")
        .skip(1)
        .map_while(|l| l.trim().strip_prefix("- "))
        .collect();
    let enumerated: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(documented, enumerated, "ErrorCode enum: proto/openapi.yaml (left) vs ErrorCode::ALL (right)");
}
