//! JSON merge patches (RFC 7396) between two versions of a keep-latest entry.
//!
//! A namespace with `delta = true` may send a subscriber that already holds the previous
//! version of a key a patch instead of the full data: [`diff`] computes it once per
//! publish at the channel's owner, clients apply it with [`apply`] (or any RFC 7396
//! implementation). Merge patches cannot say "set this member to `null`" (a `null` in a
//! patch removes the member), and they replace arrays whole; [`diff`] therefore returns
//! `None` when the new version holds a `null` inside an object, and whenever a patch
//! would not be smaller than the full data, and the full data is sent instead.

use serde_json::{Map, Value};

/// The merge patch that turns `old` into `new`, when both are objects, `new` holds no
/// `null` member at any depth, and the patch is smaller than `new` (compared as
/// compact JSON). `None` means: send `new` whole.
#[must_use]
pub fn diff(old: &Value, new: &Value) -> Option<Value> {
    let (Value::Object(o), Value::Object(n)) = (old, new) else { return None };
    if has_null_member(new) {
        return None;
    }
    let patch = Value::Object(diff_objects(o, n));
    let full = serde_json::to_string(new).ok()?.len();
    let delta = serde_json::to_string(&patch).ok()?.len();
    (delta < full).then_some(patch)
}

fn diff_objects(old: &Map<String, Value>, new: &Map<String, Value>) -> Map<String, Value> {
    let mut patch = Map::new();
    for (k, v) in new {
        match (old.get(k), v) {
            (Some(a), b) if a == b => {}
            (Some(Value::Object(a)), Value::Object(b)) => {
                patch.insert(k.clone(), Value::Object(diff_objects(a, b)));
            }
            _ => {
                patch.insert(k.clone(), v.clone());
            }
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            patch.insert(k.clone(), Value::Null);
        }
    }
    patch
}

fn has_null_member(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.values().any(|v| v.is_null() || has_null_member(v)),
        Value::Array(a) => a.iter().any(has_null_member),
        _ => false,
    }
}

/// Applies an RFC 7396 merge patch to `target` in place (section 2 of the RFC).
pub fn apply(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { return };
    for (k, v) in patch {
        if v.is_null() {
            t.remove(k);
        } else {
            apply(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn a_changed_score_becomes_a_small_patch() {
        let old = json!({"home": {"name": "Lakers", "score": 101}, "away": {"name": "Celtics", "score": 99},
                         "clock": "4:12", "period": 4, "last": "3pt by #23"});
        let new = json!({"home": {"name": "Lakers", "score": 103}, "away": {"name": "Celtics", "score": 99},
                         "clock": "3:58", "period": 4, "last": "layup by #6"});
        let patch = diff(&old, &new).expect("smaller than the full state");
        assert_eq!(patch, json!({"home": {"score": 103}, "clock": "3:58", "last": "layup by #6"}));
        let mut v = old.clone();
        apply(&mut v, &patch);
        assert_eq!(v, new);
    }

    #[test]
    fn removed_members_are_patched_to_null() {
        let old = json!({"a": 1, "b": {"c": 2, "d": 3}, "e": [1, 2, 3, 4, 5, 6, 7, 8]});
        let new = json!({"a": 1, "b": {"c": 2}, "e": [1, 2, 3, 4, 5, 6, 7, 8]});
        let patch = diff(&old, &new).expect("patch");
        assert_eq!(patch, json!({"b": {"d": null}}));
    }

    #[test]
    fn unrepresentable_or_unprofitable_changes_are_sent_whole() {
        // A null member cannot be expressed in a merge patch.
        assert_eq!(diff(&json!({"a": 1}), &json!({"a": null})), None);
        assert_eq!(diff(&json!({"a": 1}), &json!({"a": [null]})), None);
        // Not objects.
        assert_eq!(diff(&json!([1]), &json!([2])), None);
        assert_eq!(diff(&json!({"a": 1}), &json!(5)), None);
        // Everything changed: the patch is as large as the data.
        assert_eq!(diff(&json!({"a": 1}), &json!({"a": 2})), None);
    }

    /// The test cases of RFC 7396, appendix A, in order.
    #[test]
    fn apply_follows_the_rfc_examples() {
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
        for (i, (mut target, patch, want)) in cases.into_iter().enumerate() {
            apply(&mut target, &patch);
            assert_eq!(target, want, "case {}", i + 1);
        }
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<i32>().prop_map(Value::from),
            "[a-z]{0,12}".prop_map(Value::from),
            any::<bool>().prop_map(Value::from),
            prop::collection::vec(any::<u8>().prop_map(Value::from), 0..4).prop_map(Value::Array),
        ]
    }

    fn object() -> impl Strategy<Value = Value> {
        let inner =
            prop::collection::btree_map("[a-e]", leaf(), 0..5).prop_map(|m| Value::Object(m.into_iter().collect()));
        prop::collection::btree_map("[a-h]", prop_oneof![leaf(), inner], 0..8)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    }

    proptest! {
        /// Whenever a patch is produced, applying it to the old version gives the new one.
        #[test]
        fn a_patch_rebuilds_the_new_version(old in object(), new in object()) {
            if let Some(patch) = diff(&old, &new) {
                let mut v = old.clone();
                apply(&mut v, &patch);
                prop_assert_eq!(v, new);
            }
        }
    }
}
