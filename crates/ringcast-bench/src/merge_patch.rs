//! RFC 7396 JSON merge patch, applied by the scoreboard viewers to rebuild a key's state
//! from the `patch` of a delta frame (`proto/client.md`, deltas).
//!
//! What it deliberately does not do: compute patches (the server does) or RFC 6902 JSON
//! Patch. Arrays are replaced whole, `null` removes a member, and a patch that is not an
//! object replaces the target, all as the RFC says.

use serde_json::{Map, Value};

/// Applies `patch` to `target` in place (RFC 7396, section 2).
pub fn apply(target: &mut Value, patch: &Value) {
    let Value::Object(members) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(fields) = target else { return };
    for (name, value) in members {
        if value.is_null() {
            fields.remove(name);
        } else {
            apply(fields.entry(name.clone()).or_insert(Value::Null), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn patched(target: Value, patch: Value) -> Value {
        let mut t = target;
        apply(&mut t, &patch);
        t
    }

    /// The test cases of RFC 7396, appendix A, in order.
    #[test]
    fn rfc_7396_appendix_a() {
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (json!({"a":"b","b":"c"}), json!({"a":null}), json!({"b":"c"})),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (json!({"a":{"b":"c"}}), json!({"a":{"b":"d","c":null}}), json!({"a":{"b":"d"}})),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a":"b"}), json!(["c"]), json!(["c"])),
            (json!({"a":"foo"}), json!(null), json!(null)),
            (json!({"a":"foo"}), json!("bar"), json!("bar")),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (json!({}), json!({"a":{"bb":{"ccc":null}}}), json!({"a":{"bb":{}}})),
        ];
        for (i, (target, patch, want)) in cases.into_iter().enumerate() {
            assert_eq!(patched(target, patch), want, "case {}", i + 1);
        }
    }

    #[test]
    fn a_scoreboard_tick_changes_only_what_the_patch_names() {
        let state = json!({"seq":7,"ts":350,"clock":700000,"home":{"team":"Herons","score":10},"away":{"score":8}});
        let patch = json!({"seq":8,"ts":400,"clock":699950,"home":{"score":12}});
        let want = json!({"seq":8,"ts":400,"clock":699950,"home":{"team":"Herons","score":12},"away":{"score":8}});
        assert_eq!(patched(state, patch), want);
    }
}
