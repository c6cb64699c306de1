//! Reading and building `miniserde::json::Value`s by hand, where a message
//! needs field-level error messages (a request) or a shape the derives do not
//! give.

use miniserde::json::{Number, Object, Value};

pub fn object<const N: usize>(fields: [(&str, Value); N]) -> Value {
    Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

pub fn string(s: impl Into<String>) -> Value {
    Value::String(s.into())
}

pub fn uint(n: u64) -> Value {
    Value::Number(Number::U64(n))
}

pub fn float(n: f64) -> Value {
    Value::Number(Number::F64(n))
}

pub fn opt_string(s: Option<impl Into<String>>) -> Value {
    s.map_or(Value::Null, string)
}

/// A string field: `Ok(None)` when absent or null.
pub fn get_str(o: &Object, key: &str) -> Result<Option<String>, String> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("field `{key}` must be a string")),
    }
}

/// A boolean field: `false` when absent or null.
pub fn get_bool(o: &Object, key: &str) -> Result<bool, String> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(format!("field `{key}` must be true or false")),
    }
}

/// Any value that derives `miniserde::Serialize`, as a [`Value`].
pub fn to_value<T: miniserde::Serialize>(v: &T) -> Value {
    // Serialising to text and back is the only way miniserde offers; the
    // values here are small (a status report).
    miniserde::json::from_str(&miniserde::json::to_string(v)).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_and_read() {
        let v = object([("a", string("x")), ("b", Value::Bool(true))]);
        assert_eq!(miniserde::json::to_string(&v), r#"{"a":"x","b":true}"#);
        let Value::Object(o) = v else { unreachable!() };
        assert_eq!(get_str(&o, "a"), Ok(Some("x".into())));
        assert_eq!(get_str(&o, "zz"), Ok(None));
        assert!(get_str(&o, "b").is_err());
        assert_eq!(get_bool(&o, "b"), Ok(true));
        assert!(get_bool(&o, "a").is_err());
    }
}
