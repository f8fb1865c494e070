//! JSON → CEL value conversion: how the `body` of a delivery, a
//! [`serde_json::Value`], becomes the CEL value filters read (the other way
//! is never needed: a filter evaluates to a `bool`).
//!
//! Objects are maps with string keys, arrays are lists; a number is an `int`
//! when written as an integer that fits an `i64`, a `uint` when it only fits
//! a `u64`, and a `double` otherwise. Strings and keys borrow from the JSON
//! value: nothing is copied but the containers.

use std::collections::HashMap;

use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelUInt,
};
use cel::common::value::Val;

/// `value` as a CEL value: strings and keys borrow from it.
pub(super) fn json_to_val(value: &serde_json::Value) -> Box<dyn Val + '_> {
    match value {
        serde_json::Value::Null => Box::new(CelNull),
        serde_json::Value::Bool(value) => Box::new(CelBool::from(*value)),
        serde_json::Value::Number(number) => {
            if let Some(int) = number.as_i64() {
                Box::new(CelInt::from(int))
            } else if let Some(uint) = number.as_u64() {
                Box::new(CelUInt::from(uint))
            } else {
                Box::new(CelDouble::from(number.as_f64().unwrap_or(f64::NAN)))
            }
        }
        serde_json::Value::String(string) => Box::new(CelString::from(string.as_str())),
        serde_json::Value::Array(items) => Box::new(CelList::from(
            items.iter().map(json_to_val).collect::<Vec<_>>(),
        )),
        serde_json::Value::Object(entries) => Box::new(CelMap::from(
            entries
                .iter()
                .map(|(key, value)| (CelMapKey::from(key.as_str()), json_to_val(value)))
                .collect::<HashMap<_, _>>(),
        )),
    }
}
