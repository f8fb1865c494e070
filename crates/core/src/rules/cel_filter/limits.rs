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

/// The most comprehensions (`all`, `exists`, `map`, `filter`, ...) nested
/// inside the loop of one another: each level multiplies the work, so
/// `[1,2,3,4,5,6,7,8].map(a, [...].map(b, ...))` nested a dozen times would
/// never end (found by the fuzz targets, docs/FUZZING.md).
pub(super) const MAX_COMPREHENSION_NESTING: usize = 2;

/// The most elements all list literals of an expression may have together:
/// with [`MAX_COMPREHENSION_NESTING`] this bounds the loops over literals
/// (at most 512 × 512 iterations).
pub(super) const MAX_LIST_LITERAL_ELEMENTS: usize = 1024;

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

/// Why evaluating `expr` could take too long, if it could: comprehensions
/// nested more than [`MAX_COMPREHENSION_NESTING`] deep, or list literals with
/// more than [`MAX_LIST_LITERAL_ELEMENTS`] elements in all.
pub(super) fn too_costly(expr: &IdedExpr) -> Option<String> {
    let mut cost = Cost::default();
    cost.visit(expr, 0);
    if cost.nesting > MAX_COMPREHENSION_NESTING {
        return Some(format!(
            "comprehensions are nested {} deep, at most {MAX_COMPREHENSION_NESTING} levels are allowed",
            cost.nesting
        ));
    }
    (cost.list_elements > MAX_LIST_LITERAL_ELEMENTS).then(|| {
        format!(
            "its list literals have {} elements, at most {MAX_LIST_LITERAL_ELEMENTS} are allowed",
            cost.list_elements
        )
    })
}

/// What [`too_costly`] counts. The tree is at most [`MAX_AST_DEPTH`] deep
/// when it is visited, so the recursion is bounded.
#[derive(Default)]
struct Cost {
    /// The deepest nesting of comprehension loops.
    nesting: usize,
    /// Elements of all list literals.
    list_elements: usize,
}

impl Cost {
    fn visit(&mut self, expr: &IdedExpr, depth: usize) {
        match &expr.expr {
            Expr::Unspecified | Expr::Literal(_) | Expr::Ident(_) => {}
            Expr::Call(call) => {
                for e in call.target.iter().map(|t| &**t).chain(&call.args) {
                    self.visit(e, depth);
                }
            }
            Expr::Comprehension(c) => {
                // The range, the initial value and the result are evaluated
                // once; the condition and the step once per element.
                let inner = depth.saturating_add(1);
                self.nesting = self.nesting.max(inner);
                for e in [&c.iter_range, &c.accu_init, &c.result] {
                    self.visit(e, depth);
                }
                for e in [&c.loop_cond, &c.loop_step] {
                    self.visit(e, inner);
                }
            }
            Expr::List(list) => {
                self.list_elements = self.list_elements.saturating_add(list.elements.len());
                for e in &list.elements {
                    self.visit(e, depth);
                }
            }
            Expr::Map(map) => {
                for entry in &map.entries {
                    self.visit_entry(&entry.expr, depth);
                }
            }
            Expr::Struct(structure) => {
                for entry in &structure.entries {
                    self.visit_entry(&entry.expr, depth);
                }
            }
            Expr::Select(select) => self.visit(&select.operand, depth),
        }
    }

    fn visit_entry(&mut self, entry: &EntryExpr, depth: usize) {
        match entry {
            EntryExpr::StructField(field) => self.visit(&field.value, depth),
            EntryExpr::MapEntry(entry) => {
                self.visit(&entry.key, depth);
                self.visit(&entry.value, depth);
            }
        }
    }
}
