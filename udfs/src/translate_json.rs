//! `translate_json(model, json_text, target_lang [, options])`: a JSON document with its string
//! values translated and everything else kept: keys, key order, numbers, booleans, nulls and
//! nesting.
//!
//! ```sql
//! SELECT translate_json('policy', payload, 'English') FROM tool_calls;
//! ```
//!
//! Every string value that reads as language (a letter, and a space or a non-ASCII letter) is
//! translated with `ai_translate`'s prompt and options (the `prompt` option overrides it);
//! identical strings are translated once per batch. Codes and identifiers ("42", "zh-forum",
//! "celsius") are kept. `named_struct('keys', ['instruction', 'input'])` translates only the
//! strings under those keys (at any depth), each that has a letter. Text that is not JSON is an error naming the
//! row. NULL gives NULL.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::array::{Array, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, exec_err};
use datafusion::logical_expr::{Signature, TypeSignature, Volatility};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

use crate::ai_translate::{Request, executed_options, planned_options, translate};
use crate::common::model_function::{Call, ModelFunction, Planning};
use crate::common::text::string_arg;
use crate::models::model::Capability;

/// A JSON value that keeps its objects' key order (serde_json's map sorts keys here).
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    /// null, true / false, or a number, kept as parsed.
    Scalar(serde_json::Value),
    /// A string.
    Str(String),
    /// An array.
    Array(Vec<Json>),
    /// An object, in document order.
    Object(Vec<(String, Json)>),
}

impl Json {
    /// Parses JSON text.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The document as compact JSON text.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("JSON values serialize")
    }

    /// Visits the string values under any of `keys` (at any depth below them), or every
    /// string value when `keys` is None, in document order.
    pub fn selected_strings_mut(
        &mut self,
        keys: Option<&[String]>,
        f: &mut impl FnMut(&mut String),
    ) {
        match keys {
            None => self.strings_mut(f),
            Some(keys) => match self {
                Json::Array(items) => items
                    .iter_mut()
                    .for_each(|v| v.selected_strings_mut(Some(keys), f)),
                Json::Object(fields) => fields.iter_mut().for_each(|(k, v)| {
                    if keys.contains(k) {
                        v.strings_mut(f)
                    } else {
                        v.selected_strings_mut(Some(keys), f)
                    }
                }),
                Json::Str(_) | Json::Scalar(_) => {}
            },
        }
    }

    /// Visits every string value (not keys), in document order.
    pub fn strings_mut(&mut self, f: &mut impl FnMut(&mut String)) {
        match self {
            Json::Str(s) => f(s),
            Json::Array(items) => items.iter_mut().for_each(|v| v.strings_mut(f)),
            Json::Object(fields) => fields.iter_mut().for_each(|(_, v)| v.strings_mut(f)),
            Json::Scalar(_) => {}
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Json;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
                Ok(Json::Scalar(v.into()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
                Ok(Json::Scalar(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
                Ok(Json::Scalar(v.into()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Json, E> {
                Ok(Json::Scalar(v.into()))
            }
            fn visit_str<E>(self, v: &str) -> Result<Json, E> {
                Ok(Json::Str(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<Json, E> {
                Ok(Json::Str(v))
            }
            fn visit_unit<E>(self) -> Result<Json, E> {
                Ok(Json::Scalar(serde_json::Value::Null))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
                let mut items = Vec::new();
                while let Some(v) = seq.next_element()? {
                    items.push(v);
                }
                Ok(Json::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
                let mut fields = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Json>()? {
                    fields.push((k, v));
                }
                Ok(Json::Object(fields))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Scalar(v) => v.serialize(s),
            Json::Str(v) => s.serialize_str(v),
            Json::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for v in items {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
            Json::Object(fields) => {
                let mut map = s.serialize_map(Some(fields.len()))?;
                for (k, v) in fields {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

/// Whether a string is language rather than a code, an identifier or a number: it has a
/// letter, and either a space or a non-ASCII letter. "zh-forum", "celsius" or "AI" (enum
/// values, ids, units: what JSON consumers match on) stay; "今天天气很好" and "good morning"
/// are translated.
fn translatable(s: &str) -> bool {
    s.chars().any(char::is_alphabetic)
        && s.chars()
            .any(|c| c.is_whitespace() || (c.is_alphabetic() && !c.is_ascii()))
}

/// The `translate_json` SQL function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct TranslateJson {
    signature: Signature,
}

impl Default for TranslateJson {
    fn default() -> Self {
        Self {
            signature: Signature::one_of(
                vec![TypeSignature::Any(3), TypeSignature::Any(4)],
                Volatility::Volatile,
            ),
        }
    }
}

#[async_trait::async_trait]
impl ModelFunction for TranslateJson {
    const NAME: &'static str = "translate_json";
    const NEEDS: Option<Capability> = Some(Capability::Translate);
    // One request serves every row holding the same string.
    const RECORDS: bool = false;

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn plan(&self, call: &Planning<'_>) -> Result<DataType> {
        call.text_args(&[(1, "the JSON text"), (2, "target_lang")])?;
        planned_options(Self::NAME, call.args, 3)?;
        Ok(DataType::Utf8)
    }

    async fn run(&self, call: &Call<'_>) -> Result<ArrayRef> {
        let name = Self::NAME;
        let args = call.args;
        let rows = args.number_rows;
        let options = executed_options(name, args, 3)?;
        let texts = string_arg(&args.args[1], rows)?;
        let targets = string_arg(&args.args[2], rows)?;
        let mut docs: Vec<Option<Json>> = Vec::with_capacity(rows);
        for i in 0..rows {
            if texts.is_null(i) || targets.is_null(i) {
                docs.push(None);
                continue;
            }
            match Json::parse(texts.value(i)) {
                Ok(d) => docs.push(Some(d)),
                Err(e) => {
                    return exec_err!(
                        "translate_json: {}: not valid JSON: {e}",
                        crate::models::values::row_label(texts.value(i))
                    );
                }
            }
        }
        // With keys named, every string under them with a letter is wanted; otherwise those
        // that read as language.
        let keys = options.keys.clone();
        let wanted = |s: &str| match &keys {
            Some(_) => s.chars().any(char::is_alphabetic),
            None => translatable(s),
        };
        // Each distinct (string, language) is translated once: its index in `requests`.
        let mut index: HashMap<(String, String), usize> = HashMap::new();
        let mut requests: Vec<Option<Request>> = Vec::new();
        for (i, doc) in docs.iter_mut().enumerate() {
            if let Some(doc) = doc {
                doc.selected_strings_mut(keys.as_deref(), &mut |s| {
                    if !wanted(s) {
                        return;
                    }
                    let key = (s.clone(), targets.value(i).to_string());
                    index.entry(key).or_insert_with_key(|(text, target)| {
                        requests.push(Some(Request {
                            text: text.clone(),
                            target: target.clone(),
                            source: None,
                        }));
                        requests.len() - 1
                    });
                });
            }
        }
        let translated = if requests.is_empty() {
            Vec::new()
        } else {
            translate(call, name, &requests, &options).await?
        };
        let out: StringArray = docs
            .into_iter()
            .enumerate()
            .map(|(i, doc)| {
                doc.map(|mut doc| {
                    doc.selected_strings_mut(keys.as_deref(), &mut |s| {
                        if !wanted(s) {
                            return;
                        }
                        let key = (std::mem::take(s), targets.value(i).to_string());
                        *s = match index.get(&key).and_then(|&k| translated[k].clone()) {
                            Some(t) => t,
                            None => key.0,
                        };
                    });
                    doc.to_text()
                })
            })
            .collect();
        Ok(Arc::new(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_keep_key_order_numbers_and_nesting() {
        let text = r#"{"zeta": "你好", "alpha": [1, 2.5, true, null, {"b": "世界", "a": "42"}], "n": -3, "unit": "celsius", "q": "how are you"}"#;
        let mut doc = Json::parse(text).unwrap();
        let mut seen = Vec::new();
        doc.strings_mut(&mut |s| {
            seen.push(s.clone());
            if translatable(s) {
                *s = format!("<{s}>");
            }
        });
        assert_eq!(seen, ["你好", "世界", "42", "celsius", "how are you"]);
        assert_eq!(
            doc.to_text(),
            r#"{"zeta":"<你好>","alpha":[1,2.5,true,null,{"b":"<世界>","a":"42"}],"n":-3,"unit":"celsius","q":"<how are you>"}"#
        );
        assert!(Json::parse("{not json").is_err());
        let mut doc =
            Json::parse(r#"{"a": "x y", "b": {"c": ["p", {"d": "q"}]}, "c": "r"}"#).unwrap();
        let mut seen = Vec::new();
        doc.selected_strings_mut(Some(&["c".to_string()]), &mut |s| seen.push(s.clone()));
        assert_eq!(seen, ["p", "q", "r"], "under key c at any depth");
    }
}
