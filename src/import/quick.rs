//! The check pass's quick look at a line (issue 22): is it a good item, and what is its id?
//!
//! [`parse_line`](super::parse_line) builds a `serde_json::Value` tree of the whole line, with a
//! `String` for every key and string, and turns it into a [`NewItem`](crate::model::NewItem).
//! The check pass of `item import` only needs to know that the line is good and what its id is,
//! and it reads every line of files of millions of lines before anything is written. So this
//! reads the line twice without building a tree: once walking every value to refuse duplicate
//! keys at any depth (what [`StrictValue`](super::StrictValue) does), once into borrowed typed
//! structs for the fields that are checked. Small parts that existing checks take as values
//! (a dataset, Darwin item-level properties) are parsed as values and checked by those same
//! functions.
//!
//! **One invariant: [`quick_id`] returns an id only for a line that `parse_line` accepts, and
//! then the id `parse_line` gives it.** It does not word errors: on anything it does not accept
//! (a bad line, but also a good line it does not know, such as one without an id, whose id is
//! made from its canonical JSON) it returns `None`, and the caller asks `parse_line`, which
//! says what is wrong in the usual words. The tests hold it to that on every fixture, on
//! hand-made edge cases and on random lines.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::model::is_valid_item_id;

/// The id of a line that [`parse_line`](super::parse_line) would accept, or `None` when it
/// might not (see the module's invariant). `text` is the line without its line break or a
/// trailing `\r`, already known to be UTF-8 and not blank.
pub(super) fn quick_id(text: &str) -> Option<String> {
    let top = walk(text)?;
    if top.has_version || top.has_item {
        darwin_id(text)
    } else {
        plain_id(text)
    }
}

// ---------------------------------------------------------------------------------------------
// The walk: valid JSON, one object, no duplicate key at any depth
// ---------------------------------------------------------------------------------------------

/// What the walk noticed about the top-level object.
#[derive(Default)]
struct Top {
    has_version: bool,
    has_item: bool,
}

fn walk(text: &str) -> Option<Top> {
    let mut de = serde_json::Deserializer::from_str(text);
    let top = de.deserialize_map(TopVisitor).ok()?;
    de.end().ok()?;
    Some(top)
}

/// An object key as written, unescaped only when it has escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// The keys of one object so far; a repeated one is an error. A list while it is short (most
/// objects have a few keys), a set beyond.
#[derive(Default)]
struct Keys<'de> {
    list: Vec<Cow<'de, str>>,
    set: HashSet<Cow<'de, str>>,
}

impl<'de> Keys<'de> {
    const LIST: usize = 16;

    /// False when `key` was there already.
    fn insert(&mut self, key: Cow<'de, str>) -> bool {
        if self.list.len() < Self::LIST {
            if self.list.contains(&key) {
                return false;
            }
            self.list.push(key);
            return true;
        }
        if self.set.is_empty() {
            self.set.extend(self.list.iter().cloned());
        }
        self.set.insert(key)
    }
}

fn walk_map<'de, A: MapAccess<'de>>(
    mut map: A,
    mut each_key: impl FnMut(&str),
) -> Result<(), A::Error> {
    let mut keys = Keys::default();
    while let Some(Key(key)) = map.next_key()? {
        each_key(&key);
        if !keys.insert(key) {
            return Err(de::Error::custom("duplicate key"));
        }
        map.next_value_seed(Any)?;
    }
    Ok(())
}

/// Walks any value, refusing duplicate keys; builds nothing.
#[derive(Clone, Copy)]
struct Any;

impl<'de> DeserializeSeed<'de> for Any {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Any {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Any)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        walk_map(map, |_| {})
    }
}

struct TopVisitor;

impl<'de> Visitor<'de> for TopVisitor {
    type Value = Top;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Top, A::Error> {
        let mut top = Top::default();
        walk_map(map, |k| match k {
            "version" => top.has_version = true,
            "item" => top.has_item = true,
            _ => {}
        })?;
        Ok(top)
    }
}

// ---------------------------------------------------------------------------------------------
// The fields
// ---------------------------------------------------------------------------------------------

/// `raw` as `T` when it is a JSON object (a struct also deserializes from an array, which
/// `parse_line` refuses where it wants an object).
fn object<'a, T: Deserialize<'a>>(raw: &'a RawValue) -> Option<T> {
    raw.get()
        .starts_with('{')
        .then(|| serde_json::from_str(raw.get()).ok())
        .flatten()
}

/// An array whose elements are all objects; `None` (absent or `null`) is an empty one.
fn objects(raw: Option<&RawValue>) -> Option<Vec<&RawValue>> {
    let Some(raw) = raw else {
        return Some(Vec::new());
    };
    let items: Vec<&RawValue> = serde_json::from_str(raw.get()).ok()?;
    items
        .iter()
        .all(|v| v.get().starts_with('{'))
        .then_some(items)
}

/// The part of an annotation that is checked: its id.
#[derive(Deserialize)]
struct AnnotationId<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
}

/// Annotations as `finish` wants them: objects whose `id`, when given, is a 36-character UUID.
fn annotations_ok(raw: Option<&RawValue>) -> bool {
    let Some(items) = objects(raw) else {
        return false;
    };
    items.into_iter().all(|a| {
        object::<AnnotationId>(a).is_some_and(|a| match a.id {
            None => true,
            Some(id) => id.len() == 36 && Uuid::try_parse(&id).is_ok(),
        })
    })
}

fn name_ok(name: Option<&Cow<'_, str>>) -> bool {
    name.is_some_and(|n| !n.trim().is_empty())
}

fn path_ok(path: Option<&Cow<'_, str>>) -> bool {
    path.is_none_or(|p| p.starts_with('/'))
}

/// A small part checked as a value by the function `parse_line` uses.
fn value_ok<T>(
    raw: Option<&RawValue>,
    check: impl FnOnce(serde_json::Value) -> Result<T, String>,
) -> bool {
    match raw {
        None => true,
        Some(raw) => serde_json::from_str(raw.get())
            .ok()
            .is_some_and(|v| check(v).is_ok()),
    }
}

/// A plain item line. Unknown keys are refused, as `parse_line` refuses them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Plain<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    path: Option<Cow<'a, str>>,
    #[serde(borrow)]
    dataset: Option<&'a RawValue>,
    #[serde(borrow)]
    tags: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow)]
    properties: Option<&'a RawValue>,
    #[serde(borrow)]
    slots: Option<&'a RawValue>,
    #[serde(borrow)]
    annotations: Option<&'a RawValue>,
}

fn plain_id(text: &str) -> Option<String> {
    let p: Plain = serde_json::from_str(text).ok()?;
    // A line without an id gets one from its canonical JSON: `parse_line`'s work.
    let id = p.id.filter(|id| is_valid_item_id(id))?;
    let good = name_ok(p.name.as_ref())
        && path_ok(p.path.as_ref())
        && value_ok(p.dataset, super::plain_dataset)
        && p.tags.is_none_or(|t| t.iter().all(|t| !t.is_empty()))
        && p.properties.is_none_or(|v| v.get().starts_with('{'))
        && objects(p.slots).is_some()
        && annotations_ok(p.annotations);
    good.then(|| id.into_owned())
}

/// A Darwin JSON 2.0 export: the keys that are read; others are ignored, as `parse_line`
/// ignores them.
#[derive(Deserialize)]
struct Darwin<'a> {
    #[serde(borrow)]
    version: Option<Cow<'a, str>>,
    #[serde(borrow)]
    item: Option<&'a RawValue>,
    #[serde(borrow)]
    annotations: Option<&'a RawValue>,
    #[serde(borrow)]
    properties: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct DarwinItem<'a> {
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    path: Option<Cow<'a, str>>,
    #[serde(borrow)]
    source_info: Option<&'a RawValue>,
    #[serde(borrow)]
    slots: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct SourceInfo<'a> {
    #[serde(borrow)]
    item_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    dataset: Option<&'a RawValue>,
}

fn darwin_id(text: &str) -> Option<String> {
    let d: Darwin = serde_json::from_str(text).ok()?;
    if d.version.as_deref() != Some("2.0") {
        return None;
    }
    let item: DarwinItem = object(d.item?)?;
    let info: SourceInfo = object(item.source_info?)?;
    // Without an item id the line's id comes from its canonical JSON: `parse_line`'s work.
    let id = info.item_id.filter(|id| is_valid_item_id(id))?;
    let good = name_ok(item.name.as_ref())
        && path_ok(item.path.as_ref())
        && value_ok(info.dataset, super::darwin_dataset)
        && objects(item.slots).is_some()
        && annotations_ok(d.annotations)
        && value_ok(d.properties, |v| super::darwin_properties(Some(v)));
    good.then(|| id.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};
    use std::path::PathBuf;

    /// The module's invariant on one line: an id only where `parse_line` gives that id.
    fn agrees(text: &str) -> Option<String> {
        let quick = quick_id(text);
        if let Some(id) = &quick {
            match super::super::parse_line(1, text.as_bytes()) {
                Ok(item) => assert_eq!(item.id.as_str(), id, "{text}"),
                Err(e) => panic!("quick accepted a line parse_line refuses ({e}): {text}"),
            }
        }
        quick
    }

    fn fixtures() -> Vec<Value> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jsonl/darwin-v2");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
            .collect()
    }

    fn plain() -> Value {
        json!({"id": "cam-1:0042", "name": "a.jpg", "path": "/dir1",
               "dataset": {"name": "Cats", "slug": "cats"}, "tags": ["urgent"],
               "properties": {"camera": "a", "score": [1, {"k": null}]},
               "slots": [{"type": "image", "slot_name": "0"}],
               "annotations": [{"id": "b92626e7-a1fd-4ecb-a418-31aa37069bc1", "name": "box"},
                               {"name": "no id yet"}]})
    }

    /// Values to put in place of a field: one of each kind, and the edge cases of the checks.
    fn replacements() -> Vec<Option<Value>> {
        let mut v: Vec<Option<Value>> = [
            json!(null),
            json!(true),
            json!(5),
            json!(-1.5),
            json!(""),
            json!("   "),
            json!("x"),
            json!("/p"),
            json!("a b"),
            json!("2.0"),
            json!("b92626e7-a1fd-4ecb-a418-31aa37069bc1"),
            json!("b92626e7a1fd4ecba41831aa37069bc1"),
            json!([]),
            json!(["x"]),
            json!([""]),
            json!([1]),
            json!([{}]),
            json!([[]]),
            json!([{"id": 5}]),
            json!([{"id": "nope"}]),
            json!([{"name": "n", "value": 1}, {"name": "n", "value": 2}]),
            json!([{"value": 1}]),
            json!({}),
            json!({"name": "Cats"}),
            json!({"name": "Cats", "slug": ""}),
            json!({"name": "???"}),
            json!({"name": "a", "extra": 1}),
            json!({"item_id": "ok-1"}),
            json!({"item_id": "ok-1", "dataset": {"name": "D", "slug": "d"}}),
        ]
        .into_iter()
        .map(Some)
        .collect();
        v.push(None); // the key removed
        v
    }

    /// Every line made from `base` by replacing the value at one of `paths`.
    fn mutations(base: &Value, paths: &[&str]) -> Vec<String> {
        let mut out = vec![base.to_string()];
        for path in paths {
            for r in replacements() {
                let mut v = base.clone();
                let (parent, key) = match path.rsplit_once('/') {
                    Some((p, k)) => (v.pointer_mut(p), k),
                    None => (Some(&mut v), *path),
                };
                match (parent, r) {
                    (Some(Value::Object(m)), Some(r)) => {
                        m.insert(key.to_string(), r);
                    }
                    (Some(Value::Object(m)), None) => {
                        m.remove(key);
                    }
                    (Some(Value::Array(a)), Some(r)) => {
                        if let Ok(i) = key.parse::<usize>()
                            && i < a.len()
                        {
                            a[i] = r;
                        }
                    }
                    _ => continue,
                }
                out.push(v.to_string());
            }
        }
        out
    }

    #[test]
    fn every_fixture_is_recognised_with_parse_lines_id() {
        for f in fixtures() {
            assert!(agrees(&f.to_string()).is_some(), "{f}");
            // Whitespace and key order do not matter.
            assert!(
                agrees(&serde_json::to_string_pretty(&f).unwrap().replace('\n', " ")).is_some()
            );
        }
        assert!(agrees(&plain().to_string()).is_some());
    }

    #[test]
    fn mutated_darwin_lines_agree_with_parse_line() {
        let paths = [
            "version",
            "item",
            "item/name",
            "item/path",
            "item/slots",
            "item/source_info",
            "item/source_info/item_id",
            "item/source_info/dataset",
            "item/source_info/dataset/slug",
            "annotations",
            "annotations/0",
            "annotations/0/id",
            "properties",
        ];
        let mut quick = 0;
        let mut total = 0;
        for f in fixtures().iter().step_by(3) {
            for line in mutations(f, &paths) {
                total += 1;
                quick += usize::from(agrees(&line).is_some());
            }
        }
        // Most mutations are bad lines; many good ones are still recognised.
        assert!(quick > total / 10, "{quick} of {total}");
    }

    #[test]
    fn mutated_plain_lines_agree_with_parse_line() {
        let paths = [
            "id",
            "name",
            "path",
            "dataset",
            "dataset/name",
            "dataset/slug",
            "tags",
            "tags/0",
            "properties",
            "properties/score",
            "slots",
            "slots/0",
            "annotations",
            "annotations/0",
            "annotations/0/id",
            "annotations/1/id",
            "version",
            "item",
            "unknown",
        ];
        for line in mutations(&plain(), &paths) {
            agrees(&line);
        }
    }

    #[test]
    fn lines_it_must_not_accept() {
        for text in [
            // Duplicate keys, at any depth, escaped or not.
            r#"{"id": "a", "name": "x", "name": "y"}"#,
            r#"{"id": "a", "name": "x", "n\u0061me": "y"}"#,
            r#"{"id": "a", "name": "x", "properties": {"k": [{"z": 1, "z": 2}]}}"#,
            r#"{"version": "2.0", "item": {"name": "a", "source_info": {"item_id": "i", "item_id": "j"}}}"#,
            // Not one object.
            r#"[{"id": "a", "name": "x"}]"#,
            r#"{"id": "a", "name": "x"} {"id": "b", "name": "y"}"#,
            r#"{"id": "a", "name": "x",}"#,
            // Objects written as arrays (a struct would take them).
            r#"{"version": "2.0", "item": ["a", "/", {"item_id": "i"}]}"#,
            r#"{"id": "a", "name": "x", "annotations": [["b92626e7-a1fd-4ecb-a418-31aa37069bc1"]]}"#,
            r#"{"id": "a", "name": "x", "slots": [[]]}"#,
            // No id: made from the canonical JSON by parse_line.
            r#"{"name": "x"}"#,
            r#"{"id": null, "name": "x"}"#,
            r#"{"version": "2.0", "item": {"name": "a", "source_info": {}}}"#,
            // Bad values.
            r#"{"id": "a", "name": "x", "properties": []}"#,
            r#"{"id": "a", "name": "x", "tags": [""]}"#,
            r#"{"id": "a", "name": "x", "dataset": "???"}"#,
            r#"{"id": "a", "name": "x", "dataset": {"name": "d", "slug": "d", "x": 1}}"#,
            r#"{"version": null, "item": {"name": "a", "source_info": {"item_id": "i"}}}"#,
            r#"{"version": "2.0", "item": {"name": "a", "source_info": {"item_id": "i", "dataset": {"name": " "}}}}"#,
            r#"{"version": "2.0", "item": {"name": "a", "source_info": {"item_id": "i"}}, "properties": [{"value": 1}]}"#,
        ] {
            assert_eq!(agrees(text), None, "{text}");
        }
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            "[a-z/ .-]{0,6}".prop_map(Value::String),
            Just(json!("b92626e7-a1fd-4ecb-a418-31aa37069bc1")),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("id".to_string()),
                        Just("name".to_string()),
                        Just("slug".to_string()),
                        Just("value".to_string()),
                        "[a-z]{1,3}"
                    ],
                    inner,
                    0..4
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn random_fields_agree_with_parse_line(
            v in arb_json(),
            field in prop::sample::select(vec![
                "id", "name", "path", "dataset", "tags", "properties", "slots", "annotations",
            ]),
            darwin_field in prop::sample::select(vec![
                "/item/name", "/item/path", "/item/slots", "/item/source_info/dataset",
                "/item/source_info/item_id", "/annotations", "/properties", "/version",
            ]),
        ) {
            let mut p = plain();
            p[field] = v.clone();
            agrees(&p.to_string());
            let mut d = fixtures().swap_remove(0);
            let (parent, key) = darwin_field.rsplit_once('/').unwrap();
            d.pointer_mut(parent).unwrap()[key] = v;
            agrees(&d.to_string());
        }
    }
}
