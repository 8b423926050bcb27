//! Differential fuzz target: random sequences of context-variable operations, checked
//! after every step against a plain model (a map of `BTreeMap`s, one per context object,
//! and a stack of the contexts being run).
//!
//! Run from the repository root:
//!
//! ```text
//! cargo fuzz run ops                              # nightly, with ASAN
//! cargo fuzz run -s none ops fuzz/corpus/ops      # stable, no sanitizer
//! cargo fuzz fmt ops <artifact>                   # print a crash as an op list
//! ```
//!
//! The op list is flat; `RunFresh` and `RunStored` open a nested `Context::run` that
//! consumes the following ops up to the matching `Exit` (or the end of the input).

#![no_main]

use std::collections::BTreeMap;
use std::rc::Rc;

use arbitrary::Arbitrary;
use contextvars::{Context, ContextVar, Token, copy_context};
use libfuzzer_sys::fuzz_target;

/// The variables under test. The last one has a default, which `get` falls back to and
/// which does not count as a binding (`is_set`, `Context::get`, `Token::old_value`).
static VARS: [ContextVar<u32>; 3] = [
    contextvars::context_var!(u32, "a"),
    contextvars::context_var!(u32, "b"),
    contextvars::context_var!(u32, "c", default DEFAULT_C),
];
const DEFAULT_C: u32 = 7;
const DEFAULTS: [Option<u32>; 3] = [None, None, Some(DEFAULT_C)];

/// Bounds that keep one input cheap (and the recursion shallow).
const MAX_DEPTH: usize = 16;
const MAX_STORED: usize = 16;
const MAX_TOKENS: usize = 64;

#[derive(Arbitrary, Debug)]
enum Op {
    /// `VARS[var].set(value)`; the token joins the outstanding ones.
    Set { var: u8, value: u32 },
    /// `reset` the `token`-th outstanding token with its own variable.
    Reset { token: u8 },
    /// `reset` the `token`-th outstanding token with `VARS[var]` (an error if that is not
    /// the token's variable; the token is handed back and stays outstanding).
    ResetWith { token: u8, var: u8 },
    /// Drop the `token`-th outstanding token (keeps the binding).
    DropToken { token: u8 },
    /// Read `VARS[var]` in the current context.
    Get { var: u8 },
    /// `copy_context()`, stored for later `RunStored` / `CheckStored`.
    CopyContext,
    /// `stored[ctx].with_value(VARS[var], value)`, stored (a copy of the current context
    /// if nothing is stored yet).
    WithValue { ctx: u8, var: u8, value: u32 },
    /// Compare a stored context (`get`, `contains`, `len`) with the model.
    CheckStored { ctx: u8 },
    /// `Context::new().run(..)` over the following ops, up to the matching `Exit`.
    RunFresh,
    /// `stored[ctx].try_run(..)` over the following ops; `EnterError` if it is already
    /// being run (it is on the stack).
    RunStored { ctx: u8 },
    /// Ends the innermost nested run (ignored at the top level).
    Exit,
}

/// The reference semantics: every context object is a plain map.
struct Model {
    /// Context object id → bindings (var index → value).
    maps: Vec<BTreeMap<usize, u32>>,
    /// The contexts being run, innermost last.
    stack: Vec<usize>,
}

impl Model {
    fn new_context(&mut self, map: BTreeMap<usize, u32>) -> usize {
        self.maps.push(map);
        self.maps.len() - 1
    }
    fn current_id(&self) -> usize {
        *self.stack.last().expect("always inside a run")
    }
    fn current(&mut self) -> &mut BTreeMap<usize, u32> {
        let id = self.current_id();
        &mut self.maps[id]
    }
}

struct Outstanding {
    token: Token<'static, u32>,
    var: usize,
    old: Option<u32>,
    /// The model context the `set` happened in.
    ctx: usize,
}

struct Harness {
    model: Model,
    stored: Vec<(Rc<Context>, usize)>,
    tokens: Vec<Outstanding>,
}

fn pick(index: u8, len: usize) -> Option<usize> {
    (len > 0).then(|| usize::from(index) % len)
}

fn var_index(var: u8) -> usize {
    usize::from(var) % VARS.len()
}

impl Harness {
    /// The real current context matches the model's innermost context.
    fn check_current(&mut self) {
        let map = self.model.current().clone();
        for (i, var) in VARS.iter().enumerate() {
            let bound = map.get(&i).copied();
            assert_eq!(var.is_set(), bound.is_some(), "is_set of var {i}");
            assert_eq!(var.try_get().ok(), bound.or(DEFAULTS[i]), "get of var {i}");
        }
        let copy = copy_context();
        self.check_context(&copy, &map);
    }

    fn check_context(&self, ctx: &Context, map: &BTreeMap<usize, u32>) {
        assert_eq!(ctx.snapshot().len(), map.len(), "len");
        for (i, var) in VARS.iter().enumerate() {
            assert_eq!(
                ctx.snapshot().get(var).cloned(),
                map.get(&i).copied(),
                "Context::get of var {i}"
            );
            assert_eq!(ctx.snapshot().contains(var), map.contains_key(&i));
        }
    }

    fn store(&mut self, ctx: Context, map: BTreeMap<usize, u32>) {
        if self.stored.len() < MAX_STORED {
            let id = self.model.new_context(map);
            self.stored.push((Rc::new(ctx), id));
        }
    }

    fn reset(&mut self, token: u8, with: Option<usize>) {
        let Some(t) = pick(token, self.tokens.len()) else {
            return;
        };
        let Outstanding {
            token,
            var,
            old,
            ctx,
        } = self.tokens.swap_remove(t);
        let with = with.unwrap_or(var);
        let result = VARS[with].reset(token);
        if with != var {
            let error = result.expect_err("reset with another variable");
            assert!(error.is_different_var(), "{error:?}");
            let token = error.into_token();
            self.tokens.push(Outstanding {
                token,
                var,
                old,
                ctx,
            });
        } else if ctx != self.model.current_id() {
            let error = result.expect_err("reset in another context");
            assert!(error.is_different_context(), "{error:?}");
            // Python lets the token be used again in its own context; keep it.
            let token = error.into_token();
            self.tokens.push(Outstanding {
                token,
                var,
                old,
                ctx,
            });
        } else {
            result.expect("reset in the token's own context");
            let current = self.model.current();
            match old {
                Some(value) => current.insert(var, value),
                None => current.remove(&var),
            };
        }
    }

    /// Runs `ops[*pos..]` up to an `Exit` (at `depth > 0`) or the end.
    fn exec(&mut self, ops: &[Op], pos: &mut usize, depth: usize) {
        while let Some(op) = ops.get(*pos) {
            *pos += 1;
            match *op {
                Op::Set { var, value } => {
                    let i = var_index(var);
                    let old = self.model.current().insert(i, value);
                    let token = VARS[i].set(value);
                    assert_eq!(token.old_value().copied(), old, "old_value");
                    if self.tokens.len() < MAX_TOKENS {
                        let ctx = self.model.current_id();
                        self.tokens.push(Outstanding {
                            token,
                            var: i,
                            old,
                            ctx,
                        });
                    }
                }
                Op::Reset { token } => self.reset(token, None),
                Op::ResetWith { token, var } => self.reset(token, Some(var_index(var))),
                Op::DropToken { token } => {
                    if let Some(t) = pick(token, self.tokens.len()) {
                        drop(self.tokens.swap_remove(t));
                    }
                }
                Op::Get { var } => {
                    let i = var_index(var);
                    let bound = self.model.current().get(&i).copied();
                    assert_eq!(VARS[i].try_get().ok(), bound.or(DEFAULTS[i]));
                    // Python's `var.get(default)`: the variable's own default is skipped.
                    let fallback = u32::MAX;
                    assert_eq!(
                        VARS[i].with_or(&fallback, |v| *v),
                        bound.unwrap_or(fallback)
                    );
                    assert_eq!(VARS[i].get_or(fallback), bound.unwrap_or(fallback));
                }
                Op::CopyContext => {
                    let map = self.model.current().clone();
                    self.store(copy_context(), map);
                }
                Op::WithValue { ctx, var, value } => {
                    let i = var_index(var);
                    let (base, mut map) = match pick(ctx, self.stored.len()) {
                        Some(j) => {
                            let (ctx, id) = &self.stored[j];
                            (ctx.copy(), self.model.maps[*id].clone())
                        }
                        None => (copy_context(), self.model.current().clone()),
                    };
                    map.insert(i, value);
                    self.store(base.with_value(&VARS[i], value), map);
                }
                Op::CheckStored { ctx } => {
                    if let Some(j) = pick(ctx, self.stored.len()) {
                        let (ctx, id) = &self.stored[j];
                        self.check_context(ctx, &self.model.maps[*id]);
                    }
                }
                Op::RunFresh => {
                    if depth >= MAX_DEPTH {
                        continue;
                    }
                    let id = self.model.new_context(BTreeMap::new());
                    self.model.stack.push(id);
                    let ctx = Context::new();
                    ctx.run(|| self.exec(ops, pos, depth + 1));
                    self.model.stack.pop();
                    self.check_context(&ctx, &self.model.maps[id]);
                }
                Op::RunStored { ctx } => {
                    let Some(j) = pick(ctx, self.stored.len()) else {
                        continue;
                    };
                    let (ctx, id) = self.stored[j].clone();
                    if self.model.stack.contains(&id) {
                        let error = ctx.try_run(|| ()).expect_err("already entered");
                        assert!(error.is_already_entered(), "{error:?}");
                        continue;
                    }
                    if depth >= MAX_DEPTH {
                        continue;
                    }
                    self.model.stack.push(id);
                    ctx.try_run(|| self.exec(ops, pos, depth + 1))
                        .expect("a stored context not on the stack can be entered");
                    self.model.stack.pop();
                    self.check_context(&ctx, &self.model.maps[id]);
                }
                Op::Exit => {
                    if depth > 0 {
                        self.check_current();
                        return;
                    }
                }
            }
            self.check_current();
        }
    }
}

fuzz_target!(|ops: Vec<Op>| {
    // Every input runs in a fresh context, so nothing carries over between inputs (the
    // fuzzer calls this function many times on one thread).
    let mut harness = Harness {
        model: Model {
            maps: vec![BTreeMap::new()],
            stack: vec![0],
        },
        stored: Vec::new(),
        tokens: Vec::new(),
    };
    let root = Context::new();
    root.run(|| {
        harness.check_current();
        harness.exec(&ops, &mut 0, 0);
    });
    harness.check_context(&root, &harness.model.maps[0]);
    // Tokens (and stored contexts) are dropped here, outside every run: dropping keeps
    // bindings and must not touch the current context.
    drop(harness);
    assert!(
        VARS.iter().all(|var| !var.is_set()),
        "the thread's base context is untouched"
    );
});
