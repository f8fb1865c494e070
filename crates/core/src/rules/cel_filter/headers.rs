//! The headers a filter sees: the `headers` map (case-insensitive lookup of
//! a header's first value) and Tekton's `header` value (indexing yields all
//! the values of a header; `header.match(name, value)` and
//! `header.canonical(name)`), and which header names can ever be present.
//!
//! Filters see exactly the headers stored with an event: those
//! [`is_forwardable_header`] keeps, `X-GitHub-*` (`X-GitHub-Event`,
//! `X-GitHub-Delivery`, `X-GitHub-Hook-ID`,
//! `X-GitHub-Hook-Installation-Target-ID`,
//! `X-GitHub-Hook-Installation-Target-Type`, ...) and `X-Hub-*`
//! (`X-Hub-Signature`, `X-Hub-Signature-256`). Any other header
//! (`Content-Type`, `User-Agent`, `Host`, ...) is never present, so an
//! expression that reads one by a literal name is rejected at compile time:
//! see [`literal_read`].

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use cel::common::ast::{Expr, IdedExpr, LiteralValue, operators};
use cel::common::traits::{self, Container, Indexer, Iterable, Sizer};
use cel::common::types::{CelBool, CelInt, CelList, CelString, MAP_TYPE, STRING_TYPE, Type};
use cel::common::value::{CowVal, StaticVal, Val};
use cel::{Env, ExecutionError};

use crate::intake::is_forwardable_header;

/// The variables that hold the headers.
pub(super) const HEADER_VARIABLES: [&str; 2] = ["headers", "header"];

/// The type of the `header` variable, on which `match` and `canonical` are
/// declared.
static HEADER_TYPE: Type = Type::new_unspecified_type("dispatcher.Header");

/// Declares `header.match(name, value)` and `header.canonical(name)` in `env`.
pub(super) fn declare_functions(env: &mut Env) -> Result<(), cel::DeclarationError> {
    env.add_member_overload(
        "match",
        "dispatcher_header_match_string_string",
        HEADER_TYPE.to_owned(),
        vec![STRING_TYPE, STRING_TYPE],
        header_match,
    )?;
    env.add_member_overload(
        "canonical",
        "dispatcher_header_canonical_string",
        HEADER_TYPE.to_owned(),
        vec![STRING_TYPE],
        header_canonical,
    )?;
    Ok(())
}

/// Whether a header called `name` (in any case) can be present when a filter
/// is evaluated: whether it is stored with events.
pub(super) fn is_available(name: &str) -> bool {
    is_forwardable_header(name)
}

/// The header name `expr` reads by a literal, if it reads one from the
/// headers variables: `headers['name']`, `headers[?'name']`, `headers.name`,
/// `has(headers.name)` and `'name' in headers` (and the same on `header`),
/// `header.match('name', ...)` and `header.canonical('name')`.
/// `is_variable(name)` tells whether the identifier `name` is the filter's
/// variable there, not one a macro binds.
///
/// Names computed at run time, e.g. `headers[body.name]`, are not found.
pub(super) fn literal_read<'e>(
    expr: &'e IdedExpr,
    is_variable: impl Fn(&str) -> bool,
) -> Option<&'e str> {
    let is_headers = |expr: &IdedExpr, names: &[&str]| {
        matches!(&expr.expr, Expr::Ident(name)
            if names.contains(&name.as_str()) && is_variable(name))
    };
    let string = |expr: &'e IdedExpr| match &expr.expr {
        Expr::Literal(LiteralValue::String(name)) => Some(name.inner()),
        _ => None,
    };
    match &expr.expr {
        Expr::Select(select) if is_headers(&select.operand, &HEADER_VARIABLES) => {
            Some(select.field.as_str())
        }
        Expr::Call(call) => match (
            call.target.as_deref(),
            call.func_name.as_str(),
            &call.args[..],
        ) {
            (None, operators::INDEX | operators::OPT_INDEX, [map, key])
                if is_headers(map, &HEADER_VARIABLES) =>
            {
                string(key)
            }
            (None, operators::IN, [key, map]) if is_headers(map, &HEADER_VARIABLES) => string(key),
            (Some(target), "match" | "canonical", [name, ..])
                if is_headers(target, &["header"]) =>
            {
                string(name)
            }
            _ => None,
        },
        _ => None,
    }
}

/// The request headers, by lower-case name.
#[derive(Debug)]
pub(super) struct HeaderData {
    /// The lower-case names, in the order they were first sent.
    names: Vec<CelString<'static>>,
    /// The values of each header, in the order they were sent: never empty.
    values: Vec<Vec<CelString<'static>>>,
    /// The position of each lower-case name in `names` and `values`.
    index: HashMap<String, usize>,
}

impl HeaderData {
    pub(super) fn new(headers: &[(String, String)]) -> Self {
        let mut data = HeaderData {
            names: Vec::with_capacity(headers.len()),
            values: Vec::with_capacity(headers.len()),
            index: HashMap::with_capacity(headers.len()),
        };
        for (name, value) in headers {
            let name = name.to_ascii_lowercase();
            let value = CelString::from(value.clone());
            if let Some(&position) = data.index.get(&name) {
                if let Some(values) = data.values.get_mut(position) {
                    values.push(value);
                }
            } else {
                data.index.insert(name.clone(), data.names.len());
                data.names.push(CelString::from(name));
                data.values.push(vec![value]);
            }
        }
        data
    }

    /// The values of the header `name`, in any case: empty if it wasn't sent.
    fn values(&self, name: &str) -> &[CelString<'static>] {
        let position = if name.bytes().any(|byte| byte.is_ascii_uppercase()) {
            self.index.get(&name.to_ascii_lowercase())
        } else {
            self.index.get(name)
        };
        position
            .and_then(|&position| self.values.get(position))
            .map_or(&[], Vec::as_slice)
    }

    fn equals(&self, other: &HeaderData) -> bool {
        self.names.len() == other.names.len()
            && self.names.iter().zip(&self.values).all(|(name, values)| {
                let others = other.values(name.inner());
                others.len() == values.len()
                    && values
                        .iter()
                        .zip(others)
                        .all(|(value, other)| value.inner() == other.inner())
            })
    }
}

/// The `headers` map, or, when `tekton`, the `header` value of Tekton's CEL
/// interceptor: indexing yields the list of the values of a header, and it
/// has the member functions `match` and `canonical`.
#[derive(Debug, Clone)]
pub(super) struct HeaderMap {
    pub(super) data: Arc<HeaderData>,
    pub(super) tekton: bool,
}

impl HeaderMap {
    /// `key` as a header name, or the error of a map indexed with a key of
    /// the wrong type.
    fn name(key: &dyn Val) -> Result<&str, ExecutionError> {
        key.downcast_ref::<CelString<'_>>()
            .map(|name| name.inner())
            .ok_or_else(|| ExecutionError::UnexpectedType {
                got: key.get_type().name().to_owned(),
                want: "string".to_owned(),
            })
    }
}

impl Val for HeaderMap {
    fn get_type(&self) -> &Type {
        if self.tekton { &HEADER_TYPE } else { &MAP_TYPE }
    }

    fn cel_type() -> &'static Type {
        &MAP_TYPE
    }

    fn as_container(&self) -> Option<&dyn Container> {
        Some(self)
    }

    fn as_indexer<'b, 'v>(&'b self) -> Option<&'b (dyn Indexer + 'v)>
    where
        Self: 'v,
    {
        Some(self)
    }

    fn as_iterable<'b, 'v>(&'b self) -> Option<&'b (dyn Iterable + 'v)>
    where
        Self: 'v,
    {
        Some(self)
    }

    fn as_sizer(&self) -> Option<&dyn Sizer> {
        Some(self)
    }

    fn equals(&self, other: &dyn Val) -> bool {
        other
            .downcast_ref::<HeaderMap>()
            .is_some_and(|other| self.tekton == other.tekton && self.data.equals(&other.data))
    }

    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v>
    where
        Self: 'v,
    {
        Box::new(self.clone())
    }

    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }
}

impl StaticVal for HeaderMap {}

impl Container for HeaderMap {
    fn contains(&self, key: &dyn Val) -> Result<bool, ExecutionError> {
        Ok(key
            .downcast_ref::<CelString<'_>>()
            .is_some_and(|name| !self.data.values(name.inner()).is_empty()))
    }
}

impl Indexer for HeaderMap {
    fn get<'b, 'v>(&'b self, key: &dyn Val) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        let name = HeaderMap::name(key)?;
        let values = self.data.values(name);
        if self.tekton {
            if values.is_empty() {
                return Err(ExecutionError::no_such_key(name));
            }
            let list: Vec<Box<dyn Val + 'v>> = values
                .iter()
                .map(|value| Box::new(value.clone()) as Box<dyn Val + 'v>)
                .collect();
            Ok(CowVal::owned(CelList::from(list)))
        } else {
            values
                .first()
                .map(|value| CowVal::Borrowed(value as &dyn Val))
                .ok_or_else(|| ExecutionError::no_such_key(name))
        }
    }

    fn steal<'v>(self: Box<Self>, key: &dyn Val) -> Result<Box<dyn Val + 'v>, ExecutionError>
    where
        Self: 'v,
    {
        self.get(key).map(CowVal::into_owned)
    }
}

impl Iterable for HeaderMap {
    fn iter<'b, 'v>(&'b self) -> Box<dyn traits::Iterator<'b, 'v> + 'b>
    where
        Self: 'v,
    {
        Box::new(HeaderNames(self.data.names.iter()))
    }
}

impl Sizer for HeaderMap {
    fn size(&self) -> CelInt {
        CelInt::from(i64::try_from(self.data.names.len()).unwrap_or(i64::MAX))
    }
}

/// Iterates the lower-case names of the headers.
struct HeaderNames<'b>(std::slice::Iter<'b, CelString<'static>>);

impl<'b, 'v> traits::Iterator<'b, 'v> for HeaderNames<'b> {
    fn next(&mut self) -> Option<&'b (dyn Val + 'v)> {
        self.0.next().map(|name| name as &dyn Val)
    }
}

/// The receiver and string arguments of a call to a `header` function.
fn header_args<'a, const N: usize>(
    function: &str,
    args: &'a [CowVal<'_, '_>],
) -> Result<(&'a HeaderData, [&'a str; N]), ExecutionError> {
    let Some((target, rest)) = args.split_first() else {
        return Err(ExecutionError::missing_argument_or_target());
    };
    if rest.len() != N {
        return Err(ExecutionError::invalid_argument_count(N, rest.len()));
    }
    let headers = target.downcast_ref::<HeaderMap>().ok_or_else(|| {
        ExecutionError::function_error(function, "can only be called on `header`")
    })?;
    let mut strings = [""; N];
    for (slot, arg) in strings.iter_mut().zip(rest) {
        *slot = HeaderMap::name(arg.as_ref())?;
    }
    Ok((&headers.data, strings))
}

/// `header.match(name, value)`: whether one of the values of the header
/// `name` is `value`.
#[allow(
    clippy::needless_pass_by_value,
    reason = "the signature of `cel::common::functions::Function`"
)]
fn header_match<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let (data, [name, value]) = header_args::<2>("match", &args)?;
    let found = data
        .values(name)
        .iter()
        .any(|candidate| candidate.inner() == value);
    Ok(CowVal::owned(CelBool::from(found)))
}

/// `header.canonical(name)`: the first value of the header `name`, `''` if
/// it wasn't sent.
#[allow(
    clippy::needless_pass_by_value,
    reason = "the signature of `cel::common::functions::Function`"
)]
fn header_canonical<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let (data, [name]) = header_args::<1>("canonical", &args)?;
    let value = data
        .values(name)
        .first()
        .map_or_else(String::new, |value| value.inner().to_owned());
    Ok(CowVal::owned(CelString::from(value)))
}
