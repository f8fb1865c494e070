//! CEL (Common Expression Language) filters for the `filter.cel_expression`
//! setting of the dispatcher configuration: the compiled [`CelFilter`], its
//! errors, and the environment it is compiled and evaluated with.
//!
//! An expression is compiled once, when the configuration is loaded, into a
//! [`CelFilter`], then evaluated against every webhook delivery. It sees three
//! variables:
//!
//! * `body`: the JSON payload. Objects are maps with string keys, arrays are
//!   lists; a number is an `int` when written as an integer that fits an
//!   `i64`, a `uint` when it only fits a `u64`, and a `double` otherwise
//!   ([`convert`]).
//! * `headers`: the headers stored with the event, a map from name to value.
//!   Names are looked up case-insensitively, so `headers['X-GitHub-Event']`
//!   and `headers['x-github-event']` are the same header; iterating the map
//!   yields the lower-case names. A header sent more than once maps to its
//!   first value.
//! * `header`: the headers again, for the functions of Tekton's CEL
//!   interceptor: `header.match(name, value)` is whether one of the values of
//!   the header `name` is exactly `value`, and `header.canonical(name)` is its
//!   first value, or `''` when it is absent. Indexing it, as in Tekton,
//!   yields the list of all the values of a header.
//!
//! The headers are exactly those stored with an event: the `X-GitHub-*`
//! (`X-GitHub-Event`, `X-GitHub-Delivery`, `X-GitHub-Hook-ID`,
//! `X-GitHub-Hook-Installation-Target-ID`,
//! `X-GitHub-Hook-Installation-Target-Type`, ...) and `X-Hub-*`
//! (`X-Hub-Signature`, `X-Hub-Signature-256`) ones. No other header, e.g.
//! `Content-Type` or `User-Agent`, is ever present, and an expression that
//! reads one by a literal name (`headers['Content-Type']`,
//! `header.match('User-Agent', ...)`, `'Host' in headers`, ...) fails to
//! compile with [`CelCompileError::UnavailableHeader`] ([`headers`]).
//!
//! Besides the standard library (`startsWith`, `contains`, `endsWith`,
//! `matches`, `size`, `in`, `has`, the `all`/`exists`/`map`/`filter` macros,
//! ...), the strings extension (`lowerAscii`, `upperAscii`, `split`,
//! `replace`, `trim`, `join`, `indexOf`, `substring`, ...) is available.
//!
//! An expression must be at most 16 KiB long, nest brackets at most 32 deep,
//! have a syntax tree at most 48 levels deep, nest comprehensions at most 2
//! deep and have at most 1024 list literal elements in all ([`limits`]).
//!
//! The other modules: [`variables`] finds what an expression refers to, and
//! the tests are in `tests.rs`.

mod convert;
mod headers;
mod limits;
#[cfg(test)]
mod tests;
mod variables;

use std::any::Any;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, LazyLock};

use cel::common::types::CelBool;
use cel::{Context, Env, IdedExpr, ParseErrors, Value};

use self::convert::json_to_val;
use self::headers::{HeaderData, HeaderMap};
use self::variables::{References, VARIABLES};

/// The environment every filter is compiled and evaluated with: the standard
/// library, the strings extension, and the functions of `header`.
static ENV: LazyLock<Result<Arc<Env>, String>> =
    LazyLock::new(|| build_env().map(Arc::new).map_err(|error| error.to_string()));

fn build_env() -> Result<Env, cel::DeclarationError> {
    let mut env = Env::stdlib();
    env.add_extension(cel::extensions::strings)?;
    headers::declare_functions(&mut env)?;
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
    expression: Arc<IdedExpr>,
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
    /// [`CelCompileError::UnavailableHeader`] when it reads a header by a
    /// literal name that is never stored with an event, with
    /// [`CelCompileError::TooComplex`] when it is longer than 16 KiB, nests
    /// brackets more than 32 deep or has a syntax tree more than 48 levels
    /// deep, and with [`CelCompileError::Internal`] if the parser panics or its
    /// thread can't be started.
    pub fn compile(expression: &str) -> Result<CelFilter, CelCompileError> {
        if let Some(reason) = limits::source_too_long(expression) {
            return Err(CelCompileError::TooComplex {
                expression: expression.to_owned(),
                reason,
            });
        }
        // The ANTLR parser recurses deeply: a dozen nested parentheses take
        // 2 MiB of stack in a debug build, the default of spawned threads
        // and tokio's workers. Parse on a thread of our own with room to spare.
        std::thread::scope(|scope| {
            let spawned = std::thread::Builder::new()
                .name("cel-compile".to_owned())
                .stack_size(limits::COMPILE_STACK_SIZE)
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
        let parsed =
            limits::parser(&env).parse(expression).map_err(
                |errors| match limits::nesting_exceeded(&errors) {
                    Some(reason) => CelCompileError::TooComplex {
                        expression: expression.to_owned(),
                        reason,
                    },
                    None => CelCompileError::Syntax {
                        expression: expression.to_owned(),
                        reason: describe_parse_errors(&errors),
                    },
                },
            )?;

        if let Some(reason) = limits::tree_too_deep(&parsed).or_else(|| limits::too_costly(&parsed))
        {
            return Err(CelCompileError::TooComplex {
                expression: expression.to_owned(),
                reason,
            });
        }

        let references = References::of(&parsed);
        if let Some(unknown) = references
            .free
            .iter()
            .find(|name| !VARIABLES.contains(name) && env.types().find_type(name).is_none())
        {
            return Err(CelCompileError::UnknownVariable {
                expression: expression.to_owned(),
                name: (*unknown).to_owned(),
            });
        }
        if let Some(unavailable) = references
            .header_names
            .iter()
            .find(|name| !headers::is_available(name))
        {
            return Err(CelCompileError::UnavailableHeader {
                expression: expression.to_owned(),
                name: (*unavailable).to_owned(),
            });
        }
        let uses_body = references.free.contains("body");
        let uses_headers = references.free.contains("headers");
        let uses_header = references.free.contains("header");

        Ok(CelFilter {
            source: expression.to_owned(),
            expression: Arc::new(parsed),
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
    /// `body` is the webhook JSON payload; `headers` are the headers stored
    /// with the event as (name, value) pairs, names in any case (e.g.
    /// lower-case `x-github-event`, as hyper gives them).
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
        let result = Value::resolve_val(&self.expression, &context)
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
    /// The expression reads, by a literal name, a header that is never stored
    /// with an event, so never present when filters are evaluated.
    #[error(
        "invalid CEL expression `{expression}`: header `{name}` is never available to filters \
         (they see only the X-GitHub-* and X-Hub-* headers stored with an event)"
    )]
    UnavailableHeader {
        /// The expression as written.
        expression: String,
        /// The first such header name, as written.
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
