//! CEL (Common Expression Language) filters for the `filter.cel_expression`
//! setting of the dispatcher configuration.
//!
//! An expression is compiled once, when the configuration is loaded, into a
//! [`CelFilter`], then evaluated against every webhook delivery. It sees three
//! variables:
//!
//! * `body`: the JSON payload. Objects are maps with string keys, arrays are
//!   lists; a number is an `int` when written as an integer that fits an
//!   `i64`, a `uint` when it only fits a `u64`, and a `double` otherwise.
//! * `headers`: the request headers, a map from name to value. Names are
//!   looked up case-insensitively, so `headers['X-GitHub-Event']` and
//!   `headers['x-github-event']` are the same header; iterating the map yields
//!   the lower-case names. A header sent more than once maps to its first
//!   value.
//! * `header`: the headers again, for the functions of Tekton's CEL
//!   interceptor: `header.match(name, value)` is whether one of the values of
//!   the header `name` is exactly `value`, and `header.canonical(name)` is its
//!   first value, or `''` when it is absent. Indexing it, as in Tekton,
//!   yields the list of all the values of a header.
//!
//! Besides the standard library (`startsWith`, `contains`, `endsWith`,
//! `matches`, `size`, `in`, `has`, the `all`/`exists`/`map`/`filter` macros,
//! ...), the strings extension (`lowerAscii`, `upperAscii`, `split`,
//! `replace`, `trim`, `join`, `indexOf`, `substring`, ...) is available.

use std::any::Any;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, LazyLock};

use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use cel::common::traits::{self, Container, Indexer, Iterable, Sizer};
use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelUInt, MAP_TYPE,
    STRING_TYPE, Type,
};
use cel::common::value::{CowVal, StaticVal, Val};
use cel::{Context, Env, ExecutionError, ParseErrors, Program, Value};

/// The variables an expression may refer to.
const VARIABLES: [&str; 3] = ["body", "headers", "header"];

/// The namespaces of the functions of the environment that are called with a
/// qualified name, e.g. `optional.of(x)` or `strings.quote(s)`: the parser
/// reads the namespace as the target of a member call, not as a variable.
const FUNCTION_NAMESPACES: [&str; 2] = ["optional", "strings"];

/// The longest expression [`CelFilter::compile`] accepts, in bytes: the
/// parser recurses on some constructs without limit, e.g. `a.b.c...`.
const MAX_SOURCE_LEN: usize = 16 * 1024;

/// The deepest nesting of brackets (`(`, `[`, `{`) [`CelFilter::compile`]
/// accepts: the parser needs stack in proportion, beyond the limit it checks
/// itself.
const MAX_NESTING: usize = 32;

/// The deepest syntax tree [`CelFilter::compile`] accepts. Evaluation
/// recurses on the tree, with frames of up to 20 KiB in a debug build: 48
/// levels fit in the 2 MiB stack of a tokio worker or a test thread.
const MAX_AST_DEPTH: usize = 48;

/// The stack of the thread expressions are parsed on. Only the pages the
/// parser touches are committed.
const COMPILE_STACK_SIZE: usize = 64 * 1024 * 1024;

/// The type of the `header` variable, on which `match` and `canonical` are
/// declared.
static HEADER_TYPE: Type = Type::new_unspecified_type("dispatcher.Header");

/// The environment every filter is compiled and evaluated with: the standard
/// library, the strings extension, and the functions of `header`.
static ENV: LazyLock<Result<Arc<Env>, String>> =
    LazyLock::new(|| build_env().map(Arc::new).map_err(|error| error.to_string()));

fn build_env() -> Result<Env, cel::DeclarationError> {
    let mut env = Env::stdlib();
    env.add_extension(cel::extensions::strings)?;
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
    Ok(env)
}

/// A compiled `filter.cel_expression` from the dispatcher config.
///
/// Compiled once at config load; `Send + Sync`; cheap to evaluate many times
/// (and cheap to clone: the compiled program is shared). Two filters are equal
/// when their sources are.
#[derive(Clone)]
pub struct CelFilter {
    source: String,
    program: Arc<Program>,
    env: Arc<Env>,
    uses_body: bool,
    uses_headers: bool,
    uses_header: bool,
}

impl CelFilter {
    /// Compiles `expression`.
    ///
    /// Parsing happens on a short-lived thread with a large stack, which this
    /// call blocks on: call it at configuration load, not per request.
    ///
    /// # Errors
    ///
    /// Fails with [`CelCompileError::Syntax`] when `expression` doesn't parse,
    /// with [`CelCompileError::UnknownVariable`] when it refers to a variable
    /// other than `body`, `headers` and `header` (or those its macros bind, as
    /// `x` in `body.labels.exists(x, x.name == 'bug')`), with
    /// [`CelCompileError::TooComplex`] when it is longer than 16 KiB, nests
    /// brackets more than 32 deep or has a syntax tree more than 48 levels
    /// deep, and with [`CelCompileError::Internal`] if the parser panics or its
    /// thread can't be started.
    pub fn compile(expression: &str) -> Result<CelFilter, CelCompileError> {
        if expression.len() > MAX_SOURCE_LEN {
            return Err(CelCompileError::TooComplex {
                expression: expression.to_owned(),
                reason: format!(
                    "it is {} bytes long, at most {MAX_SOURCE_LEN} are allowed",
                    expression.len()
                ),
            });
        }
        let nesting = bracket_nesting(expression);
        if nesting > MAX_NESTING {
            return Err(CelCompileError::TooComplex {
                expression: expression.to_owned(),
                reason: format!(
                    "brackets are nested {nesting} deep, at most {MAX_NESTING} levels are allowed"
                ),
            });
        }
        // The ANTLR parser recurses deeply: a dozen nested parentheses take
        // 2 MiB of stack in a debug build, the default of spawned threads
        // and tokio's workers. Parse on a thread of our own with room to spare.
        std::thread::scope(|scope| {
            let spawned = std::thread::Builder::new()
                .name("cel-compile".to_owned())
                .stack_size(COMPILE_STACK_SIZE)
                .spawn_scoped(scope, || CelFilter::compile_here(expression));
            match spawned {
                Ok(handle) => handle.join().unwrap_or_else(|payload| {
                    Err(CelCompileError::Internal {
                        expression: expression.to_owned(),
                        reason: format!(
                            "the CEL parser panicked: {}",
                            panic_message(payload.as_ref())
                        ),
                    })
                }),
                Err(error) => Err(CelCompileError::Internal {
                    expression: expression.to_owned(),
                    reason: format!("could not start a thread to parse it on: {error}"),
                }),
            }
        })
    }

    /// [`CelFilter::compile`], on the current thread.
    fn compile_here(expression: &str) -> Result<CelFilter, CelCompileError> {
        let env = match &*ENV {
            Ok(env) => Arc::clone(env),
            Err(reason) => {
                return Err(CelCompileError::Internal {
                    expression: expression.to_owned(),
                    reason: format!("the CEL environment is broken: {reason}"),
                });
            }
        };
        let program = env
            .compile(expression)
            .map_err(|errors| CelCompileError::Syntax {
                expression: expression.to_owned(),
                reason: describe_parse_errors(&errors),
            })?;

        let depth = ast_depth(program.expression());
        if depth > MAX_AST_DEPTH {
            return Err(CelCompileError::TooComplex {
                expression: expression.to_owned(),
                reason: format!(
                    "its syntax tree is {depth} levels deep, at most {MAX_AST_DEPTH} are allowed"
                ),
            });
        }

        let mut free = BTreeSet::new();
        free_identifiers(program.expression(), &mut Vec::new(), &mut free);
        if let Some(unknown) = free
            .iter()
            .find(|name| !VARIABLES.contains(name) && env.types().find_type(name).is_none())
        {
            return Err(CelCompileError::UnknownVariable {
                expression: expression.to_owned(),
                name: (*unknown).to_owned(),
            });
        }
        let uses_body = free.contains("body");
        let uses_headers = free.contains("headers");
        let uses_header = free.contains("header");

        Ok(CelFilter {
            source: expression.to_owned(),
            program: Arc::new(program),
            env,
            uses_body,
            uses_headers,
            uses_header,
        })
    }

    /// The expression this filter was compiled from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates the filter against a webhook delivery.
    ///
    /// `body` is the webhook JSON payload; `headers` are the request headers
    /// as (name, value) pairs, names in any case (e.g. lower-case
    /// `x-github-event`, as hyper gives them).
    ///
    /// # Errors
    ///
    /// Fails with [`CelEvalError::Execution`] when evaluation fails, e.g. on a
    /// key missing from `body`, a division by zero or an invalid regular
    /// expression, and with [`CelEvalError::NotABool`] when the expression
    /// evaluates to something other than a `bool`.
    pub fn evaluate(
        &self,
        body: &serde_json::Value,
        headers: &[(String, String)],
    ) -> Result<bool, CelEvalError> {
        // The interpreter has a few `panic!`s on expressions the parser is not
        // expected to produce: never let one take the dispatcher down.
        guard(|| self.evaluate_unguarded(body, headers))
    }

    fn evaluate_unguarded(
        &self,
        body: &serde_json::Value,
        headers: &[(String, String)],
    ) -> Result<bool, CelEvalError> {
        let mut context = Context::with_env(Arc::clone(&self.env));
        if self.uses_body {
            context.add_variable_as_val("body", json_to_val(body));
        }
        if self.uses_headers || self.uses_header {
            let data = Arc::new(HeaderData::new(headers));
            if self.uses_headers {
                context.add_variable_as_val(
                    "headers",
                    Box::new(HeaderMap {
                        data: Arc::clone(&data),
                        tekton: false,
                    }),
                );
            }
            if self.uses_header {
                context.add_variable_as_val("header", Box::new(HeaderMap { data, tekton: true }));
            }
        }
        let result = Value::resolve_val(self.program.expression(), &context)
            .map_err(|error| CelEvalError::Execution(error.to_string()))?;
        match result.downcast_ref::<CelBool>() {
            Some(value) => Ok(*value.inner()),
            None => Err(CelEvalError::NotABool {
                kind: result.get_type().name().to_owned(),
            }),
        }
    }
}

impl fmt::Debug for CelFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CelFilter")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl PartialEq for CelFilter {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for CelFilter {}

/// Why a CEL expression could not be compiled into a [`CelFilter`].
#[derive(Debug, thiserror::Error)]
pub enum CelCompileError {
    /// The expression is not valid CEL.
    #[error("invalid CEL expression `{expression}`: {reason}")]
    Syntax {
        /// The expression as written.
        expression: String,
        /// The parser's explanation, with the line and column of each error.
        reason: String,
    },
    /// The expression refers to a variable that filters don't have.
    #[error(
        "invalid CEL expression `{expression}`: unknown variable `{name}` \
         (the variables are `body`, `headers` and `header`)"
    )]
    UnknownVariable {
        /// The expression as written.
        expression: String,
        /// The first unknown variable, in alphabetical order.
        name: String,
    },
    /// The expression is too long, or nested too deeply, to be compiled and
    /// evaluated safely: the parser and the interpreter recurse, and must not
    /// run out of stack.
    #[error("invalid CEL expression `{expression}`: too complex: {reason}")]
    TooComplex {
        /// The expression as written.
        expression: String,
        /// How deep it is, and the limit.
        reason: String,
    },
    /// The expression could not be compiled for a reason that is not its
    /// fault: a bug, or the system running out of resources.
    #[error("invalid CEL expression `{expression}`: internal error: {reason}")]
    Internal {
        /// The expression as written.
        expression: String,
        /// What went wrong.
        reason: String,
    },
}

/// Why a [`CelFilter`] could not be evaluated to a `bool`.
#[derive(Debug, thiserror::Error)]
pub enum CelEvalError {
    /// Evaluation failed, e.g. on a missing key or a division by zero.
    #[error("CEL evaluation failed: {0}")]
    Execution(String),
    /// The expression evaluated to a value that is not a `bool`.
    #[error("CEL expression evaluated to a value of type `{kind}`, not a bool")]
    NotABool {
        /// The CEL type of the value, e.g. `string` or `int`.
        kind: String,
    },
}

/// The parser's errors on one line: `line:column: message`, `; `-separated.
fn describe_parse_errors(errors: &ParseErrors) -> String {
    if errors.errors.is_empty() {
        return errors.to_string();
    }
    errors
        .errors
        .iter()
        .map(|error| format!("{}:{}: {}", error.pos.0, error.pos.1, error.msg))
        .collect::<Vec<_>>()
        .join("; ")
}

/// How deeply brackets nest in `source`, string literals aside.
fn bracket_nesting(source: &str) -> usize {
    let bytes = source.as_bytes();
    let (mut depth, mut deepest, mut at) = (0_usize, 0_usize, 0_usize);
    while let Some(&byte) = bytes.get(at) {
        at += 1;
        match byte {
            b'(' | b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            b'\'' | b'"' => {
                let triple = bytes.get(at..at + 2) == Some(&[byte, byte][..]);
                if triple {
                    at += 2;
                }
                // Skip to the end of the literal; a backslash escapes the next
                // byte. An unterminated literal runs to the end.
                while let Some(&inner) = bytes.get(at) {
                    at += 1;
                    if inner == b'\\' {
                        at += 1;
                    } else if inner == byte
                        && (!triple || bytes.get(at..at + 2) == Some(&[byte, byte][..]))
                    {
                        if triple {
                            at += 2;
                        }
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    deepest
}

/// The depth of the syntax tree of `expr`: 1 for a leaf.
fn ast_depth(expr: &IdedExpr) -> usize {
    let children = match &expr.expr {
        Expr::Unspecified | Expr::Literal(_) | Expr::Ident(_) => 0,
        Expr::Call(call) => call
            .target
            .iter()
            .map(|target| ast_depth(target))
            .chain(call.args.iter().map(ast_depth))
            .max()
            .unwrap_or(0),
        Expr::Comprehension(comprehension) => [
            &comprehension.iter_range,
            &comprehension.accu_init,
            &comprehension.loop_cond,
            &comprehension.loop_step,
            &comprehension.result,
        ]
        .into_iter()
        .map(ast_depth)
        .max()
        .unwrap_or(0),
        Expr::List(list) => list.elements.iter().map(ast_depth).max().unwrap_or(0),
        Expr::Map(map) => map
            .entries
            .iter()
            .map(|entry| entry_depth(&entry.expr))
            .max()
            .unwrap_or(0),
        Expr::Struct(structure) => structure
            .entries
            .iter()
            .map(|entry| entry_depth(&entry.expr))
            .max()
            .unwrap_or(0),
        Expr::Select(select) => ast_depth(&select.operand),
    };
    children.saturating_add(1)
}

fn entry_depth(entry: &EntryExpr) -> usize {
    match entry {
        EntryExpr::StructField(field) => ast_depth(&field.value),
        EntryExpr::MapEntry(entry) => ast_depth(&entry.key).max(ast_depth(&entry.value)),
    }
}

/// Collects the identifiers `expr` refers to that no enclosing comprehension
/// binds into `free`; `bound` holds the variables of the enclosing
/// comprehensions.
fn free_identifiers<'e>(
    expr: &'e IdedExpr,
    bound: &mut Vec<&'e str>,
    free: &mut BTreeSet<&'e str>,
) {
    match &expr.expr {
        Expr::Unspecified | Expr::Literal(_) => {}
        Expr::Ident(name) => {
            // `@`-names are the accumulators the macros introduce.
            if !name.starts_with('@') && !bound.contains(&name.as_str()) {
                free.insert(name);
            }
        }
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                let is_namespace = matches!(
                    &target.expr,
                    Expr::Ident(name)
                        if FUNCTION_NAMESPACES.contains(&name.as_str())
                            && !bound.contains(&name.as_str())
                );
                if !is_namespace {
                    free_identifiers(target, bound, free);
                }
            }
            for arg in &call.args {
                free_identifiers(arg, bound, free);
            }
        }
        Expr::Comprehension(comprehension) => {
            free_identifiers(&comprehension.iter_range, bound, free);
            free_identifiers(&comprehension.accu_init, bound, free);
            let depth = bound.len();
            bound.push(&comprehension.iter_var);
            if let Some(iter_var2) = &comprehension.iter_var2 {
                bound.push(iter_var2);
            }
            bound.push(&comprehension.accu_var);
            free_identifiers(&comprehension.loop_cond, bound, free);
            free_identifiers(&comprehension.loop_step, bound, free);
            free_identifiers(&comprehension.result, bound, free);
            bound.truncate(depth);
        }
        Expr::List(list) => {
            for element in &list.elements {
                free_identifiers(element, bound, free);
            }
        }
        Expr::Map(map) => {
            for entry in &map.entries {
                entry_identifiers(&entry.expr, bound, free);
            }
        }
        Expr::Struct(structure) => {
            for entry in &structure.entries {
                entry_identifiers(&entry.expr, bound, free);
            }
        }
        Expr::Select(select) => free_identifiers(&select.operand, bound, free),
    }
}

fn entry_identifiers<'e>(
    entry: &'e EntryExpr,
    bound: &mut Vec<&'e str>,
    free: &mut BTreeSet<&'e str>,
) {
    match entry {
        EntryExpr::StructField(field) => free_identifiers(&field.value, bound, free),
        EntryExpr::MapEntry(entry) => {
            free_identifiers(&entry.key, bound, free);
            free_identifiers(&entry.value, bound, free);
        }
    }
}

/// `body` as a CEL value: strings and keys borrow from it.
fn json_to_val(value: &serde_json::Value) -> Box<dyn Val + '_> {
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

/// Runs `evaluation`, turning a panic into a [`CelEvalError::Execution`].
fn guard(evaluation: impl FnOnce() -> Result<bool, CelEvalError>) -> Result<bool, CelEvalError> {
    catch_unwind(AssertUnwindSafe(evaluation)).unwrap_or_else(|payload| {
        Err(CelEvalError::Execution(format!(
            "the CEL interpreter panicked: {}",
            panic_message(payload.as_ref())
        )))
    })
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(message) = payload.downcast_ref::<&str>() {
        message
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message
    } else {
        "unknown panic"
    }
}

/// The request headers, by lower-case name.
#[derive(Debug)]
struct HeaderData {
    /// The lower-case names, in the order they were first sent.
    names: Vec<CelString<'static>>,
    /// The values of each header, in the order they were sent: never empty.
    values: Vec<Vec<CelString<'static>>>,
    /// The position of each lower-case name in `names` and `values`.
    index: HashMap<String, usize>,
}

impl HeaderData {
    fn new(headers: &[(String, String)]) -> Self {
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
struct HeaderMap {
    data: Arc<HeaderData>,
    tekton: bool,
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use serde_json::json;

    fn payload() -> serde_json::Value {
        json!({
            "action": "opened",
            "number": 42,
            "big": 18_446_744_073_709_551_615_u64,
            "negative": -7,
            "ratio": 0.5,
            "whole_float": 3.0,
            "nothing": null,
            "pull_request": {
                "number": 1,
                "title": "WIP: Add CEL filters",
                "draft": false,
                "base": { "ref": "main" },
                "head": { "ref": "feature/cel" },
                "labels": [ { "name": "bug" }, { "name": "ok-to-test" } ],
            },
            "commits": ["a", "b", "c"],
            "csv": "a,b,c",
        })
    }

    fn hyper_headers() -> Vec<(String, String)> {
        vec![
            ("x-github-event".to_owned(), "pull_request".to_owned()),
            ("x-github-hook-id".to_owned(), "123".to_owned()),
            ("x-hub-signature-256".to_owned(), "sha256=abc".to_owned()),
            ("content-type".to_owned(), "application/json".to_owned()),
        ]
    }

    fn canonical_headers() -> Vec<(String, String)> {
        vec![
            ("X-GitHub-Event".to_owned(), "pull_request".to_owned()),
            ("X-GitHub-Hook-ID".to_owned(), "123".to_owned()),
            ("Content-Type".to_owned(), "application/json".to_owned()),
        ]
    }

    fn eval_with(expression: &str, headers: &[(String, String)]) -> Result<bool, CelEvalError> {
        CelFilter::compile(expression)
            .unwrap_or_else(|error| panic!("{expression}: {error}"))
            .evaluate(&payload(), headers)
    }

    fn eval(expression: &str) -> Result<bool, CelEvalError> {
        eval_with(expression, &hyper_headers())
    }

    fn assert_true(expression: &str) {
        assert!(eval(expression).unwrap(), "{expression}");
    }

    fn assert_false(expression: &str) {
        assert!(!eval(expression).unwrap(), "{expression}");
    }

    fn assert_execution_error(expression: &str) -> String {
        match eval(expression) {
            Err(CelEvalError::Execution(message)) => message,
            other => panic!("{expression}: expected an execution error, got {other:?}"),
        }
    }

    #[test]
    fn body_fields_are_maps_lists_and_scalars() {
        assert_true(r#"body.pull_request.base.ref == "main""#);
        assert_false(r#"body.pull_request.base.ref == "develop""#);
        assert_true("body.action == 'opened'");
        assert_true("body.pull_request.draft == false");
        assert_true("body.nothing == null");
        assert_true("body.commits[1] == 'b'");
        assert_true("body['pull_request']['head']['ref'] == 'feature/cel'");
        assert_true("type(body.pull_request) == map && type(body.commits) == list");
    }

    #[test]
    fn json_numbers_become_int_uint_or_double() {
        assert_true("body.pull_request.number == 1");
        assert_true("body.number == 42 && body.number > 41 && body.number + 1 == 43");
        assert_true("type(body.number) == int");
        assert_true("body.negative == -7 && type(body.negative) == int");
        assert_true("type(body.big) == uint && body.big == 18446744073709551615u");
        assert_true("type(body.ratio) == double && body.ratio == 0.5");
        assert_true("type(body.whole_float) == double");
        // Heterogeneous numeric comparisons follow the CEL spec.
        assert_true("body.whole_float == 3");
        assert_true("body.number == 42u");
        assert_true("body.big > 1");
    }

    #[test]
    fn headers_are_case_insensitive() {
        for headers in [hyper_headers(), canonical_headers()] {
            for expression in [
                "headers['X-GitHub-Event'] == 'pull_request'",
                "headers['x-github-event'] == 'pull_request'",
                "headers['X-GITHUB-EVENT'] == 'pull_request'",
                "headers['X-GitHub-Hook-ID'] == '123'",
                "'X-GitHub-Event' in headers",
                "'x-github-event' in headers",
                "!('X-Nope' in headers)",
                "has(headers.host) == false",
                "headers.exists(name, name == 'x-github-event')",
                "size(headers) >= 3",
            ] {
                assert!(
                    eval_with(expression, &headers).unwrap(),
                    "{expression} with {headers:?}"
                );
            }
        }
        assert!(matches!(
            eval("headers['X-Nope'] == 'x'"),
            Err(CelEvalError::Execution(_))
        ));
    }

    #[test]
    fn repeated_headers_map_to_their_first_value() {
        let headers = vec![
            ("Accept".to_owned(), "text/plain".to_owned()),
            ("accept".to_owned(), "application/json".to_owned()),
        ];
        assert!(eval_with("headers['accept'] == 'text/plain'", &headers).unwrap());
        assert!(eval_with("size(headers) == 1", &headers).unwrap());
        assert!(eval_with("header.match('ACCEPT', 'application/json')", &headers).unwrap());
        assert!(
            eval_with(
                "header['Accept'] == ['text/plain', 'application/json']",
                &headers
            )
            .unwrap()
        );
    }

    #[test]
    fn tekton_header_functions() {
        for headers in [hyper_headers(), canonical_headers()] {
            for expression in [
                "header.match('X-GitHub-Event', 'pull_request')",
                "header.match('x-github-event', 'pull_request')",
                "!header.match('X-GitHub-Event', 'Pull_Request')",
                "!header.match('X-Nope', 'pull_request')",
                "header.canonical('X-GitHub-Event') == 'pull_request'",
                "header.canonical('X-Nope') == ''",
                "header['X-GitHub-Event'][0] == 'pull_request'",
                "'X-GitHub-Event' in header",
            ] {
                assert!(
                    eval_with(expression, &headers).unwrap(),
                    "{expression} with {headers:?}"
                );
            }
        }
        // `match` is only declared on `header`.
        assert!(matches!(
            eval("headers.match('X-GitHub-Event', 'pull_request')"),
            Err(CelEvalError::Execution(_))
        ));
        assert!(matches!(
            eval("header.match('X-GitHub-Event', 1)"),
            Err(CelEvalError::Execution(_))
        ));
    }

    #[test]
    fn string_and_list_helpers() {
        assert_true(r#"body.pull_request.title.startsWith("WIP")"#);
        assert_true("body.pull_request.title.contains('CEL')");
        assert_true("body.pull_request.title.endsWith('filters')");
        assert_true("body.pull_request.head.ref.matches('^feature/[a-z]+$')");
        assert_false("body.pull_request.head.ref.matches('^release/')");
        assert_true("size(body.commits) == 3 && body.commits.size() == 3");
        assert_true("size(body.pull_request.title) == 20");
        assert_true("'b' in body.commits && !('z' in body.commits)");
        assert_true("body.action in ['opened', 'synchronize']");
        assert_true("has(body.pull_request.draft) && !has(body.pull_request.merged)");
        assert_true("body.pull_request.title.lowerAscii().startsWith('wip:')");
        assert_true("body.pull_request.title.upperAscii() == 'WIP: ADD CEL FILTERS'");
        assert_true("body.csv.split(',') == ['a', 'b', 'c']");
        assert_true("'b' in body.csv.split(',')");
        assert_true("body.pull_request.head.ref.replace('/', '-') == 'feature-cel'");
        assert_true("body.commits.join('') == 'abc'");
        assert_true("body.pull_request.labels.exists(l, l.name == 'ok-to-test')");
        assert_true("body.pull_request.labels.all(l, l.name != 'do-not-merge')");
        assert_true("body.pull_request.labels.map(l, l.name) == ['bug', 'ok-to-test']");
        assert_true("body.pull_request.labels.filter(l, l.name == 'bug').size() == 1");
    }

    #[test]
    fn non_bool_results_are_errors() {
        for (expression, kind) in [
            ("body.action", "string"),
            ("body.number", "int"),
            ("body.pull_request", "map"),
            ("body.commits", "list"),
            ("body.nothing", "null_type"),
            ("headers", "map"),
        ] {
            match eval(expression) {
                Err(CelEvalError::NotABool { kind: actual }) => {
                    assert_eq!(actual, kind, "{expression}");
                }
                other => panic!("{expression}: {other:?}"),
            }
        }
    }

    #[test]
    fn runtime_failures_are_execution_errors() {
        let message = assert_execution_error("body.nope.x == 1");
        assert!(message.contains("nope"), "{message}");
        assert_execution_error("body.number / 0 == 1");
        assert_execution_error("body.number % 0 == 1");
        assert_execution_error("body.commits[7] == 'a'");
        assert_execution_error("body.action.matches('(') ");
        assert_execution_error("body.action == 'opened' && body.action > 1");
        assert_execution_error("body.action.nope()");
        assert_execution_error("body.pull_request.title.substring(100) == ''");
        // `||` and `&&` absorb errors when the other side decides.
        assert_true("body.action == 'opened' || body.nope.x == 1");
        assert_false("body.action == 'closed' && body.nope.x == 1");
    }

    #[test]
    fn syntax_errors_fail_to_compile() {
        for expression in [
            "body.action ==",
            "(((",
            "",
            "body.action = 'x'",
            "'unterminated",
        ] {
            match CelFilter::compile(expression) {
                Err(error @ CelCompileError::Syntax { .. }) => {
                    let message = error.to_string();
                    assert!(
                        message.starts_with(&format!("invalid CEL expression `{expression}`: ")),
                        "{message}"
                    );
                    assert!(message.len() > expression.len() + 30, "{message}");
                }
                other => panic!("{expression}: {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_variables_fail_to_compile() {
        let error = CelFilter::compile("bdy.action == 'x'").unwrap_err();
        assert!(
            matches!(&error, CelCompileError::UnknownVariable { name, .. } if name == "bdy"),
            "{error:?}"
        );
        assert!(
            error.to_string().contains("unknown variable `bdy`"),
            "{error}"
        );
        for expression in [
            "body.labels.exists(l, l.name == x)",
            "[1].map(x, x)[0] == x",
            "request.body == 1",
        ] {
            assert!(
                matches!(
                    CelFilter::compile(expression),
                    Err(CelCompileError::UnknownVariable { .. })
                ),
                "{expression}"
            );
        }
    }

    #[test]
    fn known_names_compile() {
        for expression in [
            "body.pull_request.labels.exists(l, l.name == 'bug')",
            "body.commits.all(c, body.commits.exists(d, d == c))",
            "type(body.action) == string && type(body.number) != uint",
            "optional.of(body.action).hasValue()",
            "strings.quote(body.action) == '\"opened\"'",
            "header.match('x-github-event', 'push') || headers['x-github-event'] == 'push'",
            "true",
        ] {
            let filter = CelFilter::compile(expression)
                .unwrap_or_else(|error| panic!("{expression}: {error}"));
            filter
                .evaluate(&payload(), &hyper_headers())
                .unwrap_or_else(|error| panic!("{expression}: {error}"));
        }
    }

    #[test]
    fn unused_variables_need_no_input() {
        let filter = CelFilter::compile("1 + 1 == 2").unwrap();
        assert!(filter.evaluate(&serde_json::Value::Null, &[]).unwrap());
        let filter = CelFilter::compile("body == null").unwrap();
        assert!(filter.evaluate(&serde_json::Value::Null, &[]).unwrap());
        let filter = CelFilter::compile("size(headers) == 0").unwrap();
        assert!(filter.evaluate(&json!({}), &[]).unwrap());
    }

    #[test]
    fn source_debug_clone_and_eq() {
        let filter = CelFilter::compile("body.action == 'opened'").unwrap();
        assert_eq!(filter.source(), "body.action == 'opened'");
        let debug = format!("{filter:?}");
        assert!(debug.contains("body.action == 'opened'"), "{debug}");
        assert!(!debug.contains("program"), "{debug}");
        let copy = filter.clone();
        assert_eq!(copy, filter);
        assert!(copy.evaluate(&payload(), &[]).unwrap());
    }

    #[test]
    fn error_messages_are_readable() {
        assert_eq!(
            CelEvalError::NotABool {
                kind: "string".to_owned()
            }
            .to_string(),
            "CEL expression evaluated to a value of type `string`, not a bool"
        );
        let error = eval("body.nope == 1").unwrap_err();
        assert_eq!(
            error.to_string(),
            "CEL evaluation failed: No such key: nope"
        );
    }

    #[test]
    fn filters_are_send_and_sync_and_usable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<CelFilter>();
        assert_send_sync::<CelCompileError>();
        assert_send_sync::<CelEvalError>();

        let filter = Arc::new(CelFilter::compile("body.number == 42").unwrap());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let filter = Arc::clone(&filter);
                std::thread::spawn(move || filter.evaluate(&payload(), &[]).unwrap())
            })
            .collect();
        for handle in handles {
            assert!(handle.join().unwrap());
        }
    }

    #[test]
    fn large_payloads_evaluate() {
        let items: Vec<_> = (0..20_000)
            .map(|i| json!({ "id": i, "name": format!("item-{i}") }))
            .collect();
        let body = json!({ "items": items });
        let filter = CelFilter::compile("body.items.exists(i, i.name == 'item-19999')").unwrap();
        assert!(filter.evaluate(&body, &[]).unwrap());
    }

    #[test]
    fn panics_become_execution_errors() {
        match guard(|| panic!("boom")) {
            Err(CelEvalError::Execution(message)) => {
                assert_eq!(message, "the CEL interpreter panicked: boom");
            }
            other => panic!("{other:?}"),
        }
        assert!(guard(|| Ok(true)).unwrap());
    }

    #[test]
    fn nesting_that_would_overflow_the_stack_is_rejected() {
        // 32 nested parentheses take more than the 2 MiB of this test thread
        // to parse in a debug build: compiling happens on a thread of its own.
        let parens = format!(
            "{}body.action == 'opened'{}",
            "(".repeat(32),
            ")".repeat(32)
        );
        assert!(eval(&parens).unwrap());
        let lists = format!("{}1{} != []", "[".repeat(31), "]".repeat(31));
        assert!(eval(&lists).unwrap());

        let too_deep = format!("{}true{}", "(".repeat(33), ")".repeat(33));
        let error = CelFilter::compile(&too_deep).unwrap_err();
        assert!(
            matches!(error, CelCompileError::TooComplex { .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("nested 33 deep"), "{error}");
        // Brackets in string literals don't count.
        let quoted = format!(
            r#"body.action != '{0}' && body.action != "{0}" && body.action != '''{0}'''"#,
            "(".repeat(100)
        );
        assert!(eval(&quoted).unwrap());
        assert_eq!(bracket_nesting(r#"f('\'((', "(\"(") + [(x)]"#), 2);

        // Evaluation recurses on the syntax tree: 48 levels are fine, more are not.
        let sum = format!("{} == 47", vec!["1"; 47].join(" + "));
        assert!(eval(&sum).unwrap());
        let sum = format!("{} == 48", vec!["1"; 48].join(" + "));
        let error = CelFilter::compile(&sum).unwrap_err();
        assert!(
            error.to_string().contains("syntax tree is 49 levels deep"),
            "{error}"
        );
        let exists = format!(
            "{}true{}",
            (0..23)
                .map(|i| format!("body.commits.exists(c{i}, "))
                .collect::<String>(),
            ")".repeat(23)
        );
        assert!(eval(&exists).unwrap());

        let long = format!("body{} == 1", ".a".repeat(10_000));
        let error = CelFilter::compile(&long).unwrap_err();
        assert!(error.to_string().contains("20009 bytes long"), "{error}");
        let chain = format!("body{} == 1", ".a".repeat(5_000));
        assert!(matches!(
            CelFilter::compile(&chain),
            Err(CelCompileError::TooComplex { .. })
        ));
    }

    #[test]
    fn evaluation_never_panics() {
        for expression in [
            "body.action[0] == 'o'",
            "int(body.action) == 1",
            "body.number * 9223372036854775807 == 1",
            "-9223372036854775807 - 2 == 1",
            "body.big + 1u == 0u",
            "'%s %d'.format([]) == ''",
            "body.action.charAt(100) == ''",
            "body.action.indexOf('', 100) == 1",
            "body.action.lastIndexOf('x', -1) == 1",
            "body.action.split('', -5) == []",
            "body.commits.join(1) == ''",
            "{'a': 1, 'a': 2}.a == 1",
            "optional.none().value() == 1",
            "double('nan') == double('nan')",
            "uint(-1) == 1u",
            "body.ratio / 0.0 > 1.0",
        ] {
            let filter = CelFilter::compile(expression)
                .unwrap_or_else(|error| panic!("{expression}: {error}"));
            match filter.evaluate(&payload(), &hyper_headers()) {
                Ok(_) | Err(CelEvalError::Execution(_)) => {}
                Err(error) => panic!("{expression}: {error:?}"),
            }
        }
    }
}
