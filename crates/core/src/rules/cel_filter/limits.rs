//! How large and how deep an expression may be: the limits
//! [`CelFilter::compile`](super::CelFilter::compile) enforces so that neither
//! parsing nor evaluating a filter can run out of stack.
//!
//! * Bracket nesting (`(`, `[`, `{`) is bounded by the `cel` parser itself,
//!   with [`Parser::max_recursion_depth`]: brackets in string literals don't
//!   count, and the parser stops as soon as the limit is crossed.
//! * The source length and the depth of the syntax tree have no parser
//!   option (the `cel` parser has none for the size of an expression), so
//!   they are checked here: chains such as `a.b.c...` nest without brackets,
//!   which the parser's count misses although building their tree recurses,
//!   and the interpreter recurses on the syntax tree, which `1 + 1 + ...`
//!   makes deep without any bracket.

use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use cel::parser::Parser;
use cel::{Env, ParseErrors};

/// The longest expression accepted, in bytes: the parser recurses on some
/// constructs without limit, e.g. `a.b.c...`.
pub(super) const MAX_SOURCE_LEN: usize = 16 * 1024;

/// The deepest nesting of brackets (`(`, `[`, `{`) accepted: the parser needs
/// stack in proportion.
pub(super) const MAX_NESTING: u16 = 32;

/// The deepest syntax tree accepted. Evaluation recurses on the tree, with
/// frames of up to 20 KiB in a debug build: 48 levels fit in the 2 MiB stack
/// of a tokio worker or a test thread.
pub(super) const MAX_AST_DEPTH: usize = 48;

/// The stack of the thread expressions are parsed on. Only the pages the
/// parser touches are committed.
pub(super) const COMPILE_STACK_SIZE: usize = 64 * 1024 * 1024;

/// What the `cel` parser reports when [`MAX_NESTING`] is exceeded.
const NESTING_ERROR: &str = "Recursion limit of";

/// Why `expression` is too long to be parsed, if it is.
pub(super) fn source_too_long(expression: &str) -> Option<String> {
    (expression.len() > MAX_SOURCE_LEN).then(|| {
        format!(
            "it is {} bytes long, at most {MAX_SOURCE_LEN} are allowed",
            expression.len()
        )
    })
}

/// The parser of `env`, with its macros, stopping at [`MAX_NESTING`]
/// brackets.
pub(super) fn parser(env: &Env) -> Parser {
    env.parser().max_recursion_depth(MAX_NESTING)
}

/// Why parsing failed, when it failed because brackets nest more than
/// [`MAX_NESTING`] deep: the parser's own message names its internal count.
pub(super) fn nesting_exceeded(errors: &ParseErrors) -> Option<String> {
    errors
        .errors
        .iter()
        .any(|error| {
            error.msg.contains(NESTING_ERROR)
                || error
                    .source
                    .as_ref()
                    .is_some_and(|source| source.to_string().contains(NESTING_ERROR))
        })
        .then(|| {
            format!("brackets are nested more than {MAX_NESTING} deep, at most {MAX_NESTING} levels are allowed")
        })
}

/// Why the syntax tree `expr` is too deep to be evaluated, if it is.
pub(super) fn tree_too_deep(expr: &IdedExpr) -> Option<String> {
    let depth = ast_depth(expr);
    (depth > MAX_AST_DEPTH).then(|| {
        format!("its syntax tree is {depth} levels deep, at most {MAX_AST_DEPTH} are allowed")
    })
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
