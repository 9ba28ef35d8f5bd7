//! Splitting one TOML table between several `deny_unknown_fields` structs (common bridge
//! keys, shared connection keys, kind keys), since serde's `flatten` cannot deny unknown
//! keys. Each struct's key list is read from its own `Deserialize` impl, so it never
//! drifts from the struct.

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use serde_json::{Map, Value};

/// The field names a struct's derived `Deserialize` accepts.
pub fn names<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    struct Probe(Option<&'static [&'static str]>);

    impl<'de> Deserializer<'de> for &mut Probe {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("field probe"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            self.0 = Some(fields);
            Err(de::Error::custom("field probe"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }

    let mut probe = Probe(None);
    let _ = T::deserialize(&mut probe);
    probe.0.unwrap_or(&[])
}

/// Moves the keys that `T` accepts out of `table` into a new table.
pub fn take<T: for<'de> Deserialize<'de>>(table: &mut Map<String, Value>) -> Map<String, Value> {
    names::<T>()
        .iter()
        .filter_map(|name| table.remove(*name).map(|v| ((*name).to_owned(), v)))
        .collect()
}

/// Refuses the first key of `table` that is not in `accepted`, listing what is, since
/// serde's own message would list only the keys of one of the structs sharing a table.
pub fn reject_unknown(
    table: &Map<String, Value>,
    accepted: &[&str],
    what: &str,
) -> Result<(), String> {
    match table.keys().find(|key| !accepted.contains(&key.as_str())) {
        None => Ok(()),
        Some(unknown) => Err(format!(
            "key `{unknown}`: unknown key; {what} accepts the common bridge keys and {}",
            accepted.join(", ")
        )),
    }
}

/// Deserialises `T`, naming the offending key path in the error.
pub fn parse<T: for<'de> Deserialize<'de>>(value: Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        if path == "." || path.is_empty() {
            err.inner().to_string()
        } else {
            format!("key `{path}`: {}", err.inner())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        alpha: u32,
        #[serde(rename = "type")]
        kind: Option<String>,
    }

    #[test]
    fn reads_field_names_from_the_struct() {
        assert_eq!(names::<Sample>(), &["alpha", "type"]);
        let mut table = serde_json::json!({"alpha": 1, "type": "x", "other": true})
            .as_object()
            .unwrap()
            .clone();
        let taken = take::<Sample>(&mut table);
        assert_eq!(taken.len(), 2);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn errors_name_the_key() {
        let err = parse::<Sample>(serde_json::json!({"alpha": "one"})).unwrap_err();
        assert!(err.contains("key `alpha`"), "{err}");
        let err = parse::<Sample>(serde_json::json!({"alpha": 1, "beta": 2})).unwrap_err();
        assert!(err.contains("beta"), "{err}");
    }
}
