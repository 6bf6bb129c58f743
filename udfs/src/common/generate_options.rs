//! Generation options, as `ai_generate`, `ai_generate_n`, `ai_judge` and the translation
//! functions take them: a struct literal (`named_struct('temperature', 0.7, ...)`), every
//! message naming the function and the option.

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;

use crate::models::types::GenerateParams;

fn number(f: &str, key: &str, v: &ScalarValue) -> Result<f64, String> {
    let c = v
        .cast_to(&DataType::Float64)
        .map_err(|_| format!("{f}: option {key} must be a number, got {v}"))?;
    match c {
        ScalarValue::Float64(Some(x)) => Ok(x),
        _ => Err(format!("{f}: option {key} must be a number, got {v}")),
    }
}

/// Parses an options struct; every message names the function and the option.
pub fn parse_options(f: &str, options: Option<&ScalarValue>) -> Result<GenerateParams, String> {
    parse_options_with(f, options, &[]).map(|(o, _)| o)
}

/// Options of a function that takes generation options and some of its own (`extra`, returned
/// by name as given).
#[allow(clippy::type_complexity)]
pub fn parse_options_with(
    f: &str,
    options: Option<&ScalarValue>,
    extra: &[&str],
) -> Result<(GenerateParams, Vec<(String, ScalarValue)>), String> {
    let mut o = GenerateParams::default();
    let mut own = Vec::new();
    let Some(options) = options else {
        return Ok((o, own));
    };
    let ScalarValue::Struct(s) = options else {
        return Err(format!(
            "{f}: options must be a struct literal such as named_struct('temperature', 0.7), got {options}"
        ));
    };
    for (field, column) in s.fields().iter().zip(s.columns()) {
        let key = field.name().as_str();
        let v = ScalarValue::try_from_array(column, 0).map_err(|e| e.to_string())?;
        match key {
            "temperature" => {
                o.temperature = number(f, key, &v)?;
                if !(0.0..=2.0).contains(&o.temperature) {
                    return Err(format!(
                        "{f}: temperature must be between 0 and 2, got {}",
                        o.temperature
                    ));
                }
            }
            "top_p" => {
                let p = number(f, key, &v)?;
                if !(p > 0.0 && p <= 1.0) {
                    return Err(format!("{f}: top_p must be in (0, 1], got {p}"));
                }
                o.top_p = Some(p);
            }
            "top_k" | "max_tokens" | "seed" => {
                let n = number(f, key, &v)?;
                if n < 0.0 || n.fract() != 0.0 || (key != "seed" && n < 1.0) {
                    return Err(format!(
                        "{f}: {key} must be a whole number{}, got {n}",
                        if key == "seed" { "" } else { " of at least 1" }
                    ));
                }
                match key {
                    "top_k" => o.top_k = Some(n as usize),
                    "max_tokens" => o.max_tokens = n as usize,
                    _ => o.seed = n as u64,
                }
            }
            "stop" => {
                o.stop = match &v {
                    ScalarValue::Utf8(Some(x))
                    | ScalarValue::Utf8View(Some(x))
                    | ScalarValue::LargeUtf8(Some(x)) => vec![x.clone()],
                    ScalarValue::List(l) => {
                        let values = l.value(0);
                        let strings = datafusion::arrow::compute::cast(&values, &DataType::Utf8)
                            .map_err(|e| e.to_string())?;
                        strings
                            .as_string::<i32>()
                            .iter()
                            .flatten()
                            .map(str::to_string)
                            .collect()
                    }
                    other => {
                        return Err(format!(
                            "{f}: stop must be a string or a list of strings, got {other}"
                        ));
                    }
                };
                // An empty stop string would match at once: every answer would be empty.
                if o.stop.iter().any(|s| s.is_empty()) {
                    return Err(format!("{f}: a stop string is empty"));
                }
            }
            "chat" | "truncate" => {
                let b = match v {
                    ScalarValue::Boolean(Some(b)) => b,
                    other => return Err(format!("{f}: {key} must be true or false, got {other}")),
                };
                if key == "chat" {
                    o.chat = b;
                } else {
                    o.truncate = b;
                }
            }
            other if extra.contains(&other) => own.push((other.to_string(), v)),
            other => {
                let mut known =
                    "temperature, top_p, top_k, max_tokens, stop, seed, chat, truncate".to_string();
                for e in extra {
                    known.push_str(", ");
                    known.push_str(e);
                }
                return Err(format!("{f}: unknown option '{other}' (known: {known})"));
            }
        }
    }
    Ok((o, own))
}
