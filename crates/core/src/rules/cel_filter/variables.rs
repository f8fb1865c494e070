//! What an expression refers to, found on its syntax tree: the variables it
//! uses (to reject unknown ones, and to build only the variables it needs),
//! and the header names it reads by a literal (to reject those never
//! present).

use std::collections::BTreeSet;

use cel::common::ast::{EntryExpr, Expr, IdedExpr};

use super::headers;

/// The variables an expression may refer to.
pub(super) const VARIABLES: [&str; 3] = ["body", "headers", "header"];

/// The namespaces of the functions of the environment that are called with a
/// qualified name, e.g. `optional.of(x)` or `strings.quote(s)`: the parser
/// reads the namespace as the target of a member call, not as a variable.
const FUNCTION_NAMESPACES: [&str; 2] = ["optional", "strings"];

/// What an expression refers to.
#[derive(Debug, Default)]
pub(super) struct References<'e> {
    /// The identifiers it refers to that no enclosing comprehension binds:
    /// variables, or type names such as `int`.
    pub(super) free: BTreeSet<&'e str>,
    /// The header names it reads by a literal, in the order they are written
    /// (see [`headers::literal_read`]).
    pub(super) header_names: Vec<&'e str>,
}

impl<'e> References<'e> {
    /// What `expr` refers to.
    pub(super) fn of(expr: &'e IdedExpr) -> Self {
        let mut references = References::default();
        references.walk(expr, &mut Vec::new());
        references
    }

    /// Collects the references of `expr`; `bound` holds the variables of the
    /// enclosing comprehensions.
    fn walk(&mut self, expr: &'e IdedExpr, bound: &mut Vec<&'e str>) {
        if let Some(name) = headers::literal_read(expr, |name| !bound.contains(&name)) {
            self.header_names.push(name);
        }
        match &expr.expr {
            Expr::Unspecified | Expr::Literal(_) => {}
            Expr::Ident(name) => {
                // `@`-names are the accumulators the macros introduce.
                if !name.starts_with('@') && !bound.contains(&name.as_str()) {
                    self.free.insert(name);
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
                        self.walk(target, bound);
                    }
                }
                for arg in &call.args {
                    self.walk(arg, bound);
                }
            }
            Expr::Comprehension(comprehension) => {
                self.walk(&comprehension.iter_range, bound);
                self.walk(&comprehension.accu_init, bound);
                let depth = bound.len();
                bound.push(&comprehension.iter_var);
                if let Some(iter_var2) = &comprehension.iter_var2 {
                    bound.push(iter_var2);
                }
                bound.push(&comprehension.accu_var);
                self.walk(&comprehension.loop_cond, bound);
                self.walk(&comprehension.loop_step, bound);
                self.walk(&comprehension.result, bound);
                bound.truncate(depth);
            }
            Expr::List(list) => {
                for element in &list.elements {
                    self.walk(element, bound);
                }
            }
            Expr::Map(map) => {
                for entry in &map.entries {
                    self.walk_entry(&entry.expr, bound);
                }
            }
            Expr::Struct(structure) => {
                for entry in &structure.entries {
                    self.walk_entry(&entry.expr, bound);
                }
            }
            Expr::Select(select) => self.walk(&select.operand, bound),
        }
    }

    fn walk_entry(&mut self, entry: &'e EntryExpr, bound: &mut Vec<&'e str>) {
        match entry {
            EntryExpr::StructField(field) => self.walk(&field.value, bound),
            EntryExpr::MapEntry(entry) => {
                self.walk(&entry.key, bound);
                self.walk(&entry.value, bound);
            }
        }
    }
}
