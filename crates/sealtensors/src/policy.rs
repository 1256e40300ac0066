//! Access policies (SPEC §3.4, §3.6): the one place that knows Rego.
//!
//! A policy is Rego text stored verbatim under `sealtensors.policy`, so the
//! MAC and the signature cover it. Its decision is `data.sealtensors.allow`;
//! `data.sealtensors.deny_reasons`, a set or array of strings, says why not.
//! A reader evaluates it with the input document of [`input_document`] after
//! the signature and expiry checks and before any key slot is tried.
//!
//! A policy may come from an untrusted file (an unsigned one, whose header
//! nothing authenticates before a key is unwrapped), so evaluation is bounded:
//!
//! - the text is at most [`MAX_POLICY_BYTES`], checked before it is parsed,
//!   and so are the parser's work ([`MAX_POLICY_NESTING`],
//!   [`MAX_POLICY_PARSE_WORK`]) and the exponents of number literals
//!   ([`MAX_POLICY_NUMBER_EXPONENT`]);
//! - regorus is built without its network, clock, randomness, regex and
//!   other optional builtins, and the text may call only the builtins of
//!   [`ALLOWED_BUILTINS`] and its own functions (no `with`): no builtin
//!   whose single call allocates from a number (`numbers.range`, `sprintf`
//!   widths) or multiplies its input (`replace`), none that depends on
//!   anything but the input document. A call is resolved against that list
//!   whatever the policy defines, and no rule may take a builtin's name; in
//!   the engine every other builtin is replaced by a refusal;
//! - evaluation stops after [`EVAL_TIME_LIMIT`] of wall-clock time
//!   (regorus's cooperative timer, checked at every step of evaluation);
//! - a panic inside the evaluator is caught and reported as an error.
//!
//! Memory is bounded by the time limit and the size limit only: regorus
//! counts memory only when it installs its own global allocator (feature
//! `allocator-memory-limits`), which a library must not impose on the
//! programs that link it. See docs/policy.md for what a local policy can and
//! cannot enforce.

use std::collections::BTreeSet;
use std::num::{NonZeroU32, NonZeroUsize};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::seal::ModelInfo;

/// Largest policy text, in bytes (SPEC §9).
pub const MAX_POLICY_BYTES: usize = 64 * 1024;
/// Deepest nesting of `(`, `[` and `{` in a policy (SPEC §9). The Rego parser
/// backtracks at a cost that doubles per level of nesting, before any
/// evaluation timer runs; honest policies nest 4 or 5 deep.
pub const MAX_POLICY_NESTING: usize = 10;
/// Most parse work in a policy (SPEC §9), counted on the text before the
/// parser sees it: each token weighs the product of the weights of the
/// brackets around it ([`PARSE_WORK_FACTOR_BRACKET`] for `[` and `{`,
/// [`PARSE_WORK_FACTOR_PAREN`] for `(`), 1 at the top level. Nesting alone
/// bounds one rule, not the sum over thousands of them (review: 2,000 rules
/// nested 10 deep, 64 KiB, took 34 s to parse on every open). regorus
/// re-parses the inside of every `[` and `{` (it tries a comprehension
/// first): measured here, each level multiplies the cost by 2.2 to 2.5, one
/// rule nested 10 deep takes 110 ms, and even flat rules cost 5 to 12 µs per
/// token. At this bound the slowest accepted policy measured parses in about
/// 100 ms on a loaded 2-core machine; the templates weigh a few hundred.
pub const MAX_POLICY_PARSE_WORK: u64 = 1 << 14;
/// Parse-work weight of a token inside `[` or `{` (see [`MAX_POLICY_PARSE_WORK`]).
pub const PARSE_WORK_FACTOR_BRACKET: u64 = 3;
/// Parse-work weight of a token inside `(` (see [`MAX_POLICY_PARSE_WORK`]).
pub const PARSE_WORK_FACTOR_PAREN: u64 = 2;
/// Largest exponent of a number literal in a policy (SPEC §9): regorus turns
/// `0e999999999` into an exact integer, computing 10^999999999 while parsing.
/// 308 is the largest exponent of a finite `f64`.
pub const MAX_POLICY_NUMBER_EXPONENT: u32 = 308;
/// Wall-clock limit of one evaluation (SPEC §9).
pub const EVAL_TIME_LIMIT: Duration = Duration::from_millis(100);
/// The decision rule.
pub const DECISION_RULE: &str = "data.sealtensors.allow";
/// The optional rule that explains a denial.
pub const REASONS_RULE: &str = "data.sealtensors.deny_reasons";
/// The environment variable that supplies licence claims (JSON, or a file).
pub const LICENCE_ENV: &str = "SEALTENSORS_LICENCE";
/// Version of the input document (SPEC §3.6).
pub const INPUT_VERSION: u64 = 1;

/// The builtins a policy may call (SPEC §3.4). Every call is resolved
/// against this list, whatever the policy defines (see [`check_profile`]),
/// and every other builtin is replaced by a refusal in the engine.
///
/// The audit, entry by entry. What matters is that no single call allocates
/// more than a small multiple of its arguments, because the 100 ms timer runs
/// between evaluation steps, never inside one; growth over many steps (each
/// at most doubling what exists) stays under the timer. Strings a policy
/// builds are at most 64 KiB (`concat`), or come from the input document.
///
/// - `abs`, `ceil`, `floor`, `round`: a number of the size of the argument.
///   Number literals are bounded ([`MAX_POLICY_NUMBER_EXPONENT`]).
/// - `array.concat`: |a| + |b| elements (each shared, not copied), so one
///   call at most doubles the largest array the policy already built under
///   the timer.
/// - `array.slice`, `object.get`, `object.keys`, `substring`, `trim*`: a part
///   of the argument.
/// - `concat`: replaced by [`capped_concat`] (its output is n copies of its
///   inputs: at most [`MAX_POLICY_STRING_BYTES`]).
/// - `contains`, `endswith`, `startswith`, `indexof`, `count`, `is_*`,
///   `type_name`: a boolean, a number or a short name; linear time.
/// - `glob.match`: replaced by [`capped_glob_match`] (regorus's version
///   rewrites its strings once per delimiter: bounded to
///   [`MAX_GLOB_DELIMITERS`] delimiters and [`MAX_GLOB_PATTERN_BYTES`] of
///   pattern; globset compiles to a size-limited regex, matched in linear
///   time).
/// - `intersection`, `union`: at most the elements of the arguments.
/// - `lower`, `upper`: at most 3 times the argument's bytes (the longest
///   Unicode case mapping).
/// - `max`, `min`, `sum`, `sort`: an element, a number, or the same elements
///   reordered (n log n).
/// - `split`: at most one piece per byte of the argument, each a part of it.
/// - `to_number`: regorus reads the string as a JSON number (an `f64` beyond
///   the 64-bit integers), never as an exact integer with an exponent.
///
/// Left out on purpose: `numbers.range`/`range_step` (the whole range in one
/// call), `sprintf` and `format_int` (a width or precision pads without
/// bound: `%999999999999d`), `replace`/`strings.replace_n` (output
/// multiplies the input), `strings.reverse`, `strings.count` and the rest of
/// the string builtins (not needed), `json.*`/`yaml.*`/`base64*`/`hex.*`/
/// `urlquery.*` decoding and encoding (nested documents and sizes chosen by
/// the text), `units.*` (exponents), `bits.*` (`bits.lsh(1, n)` is a 2^n
/// integer), `product` (a product of many numbers grows without bound),
/// `object.union_n`/`object.filter`/`object.remove`/`json.patch` (not needed),
/// `trace` and `print` (output), and every clock, randomness, network and
/// regex builtin (not compiled in).
pub const ALLOWED_BUILTINS: &[&str] = &[
    "abs",
    "array.concat",
    "array.slice",
    "ceil",
    "concat",
    "contains",
    "count",
    "endswith",
    "floor",
    "glob.match",
    "indexof",
    "intersection",
    "is_array",
    "is_boolean",
    "is_null",
    "is_number",
    "is_object",
    "is_set",
    "is_string",
    "lower",
    "max",
    "min",
    "object.get",
    "object.keys",
    "round",
    "sort",
    "split",
    "startswith",
    "substring",
    "sum",
    "to_number",
    "trim",
    "trim_left",
    "trim_prefix",
    "trim_right",
    "trim_space",
    "trim_suffix",
    "type_name",
    "union",
    "upper",
];

const SOURCE_NAME: &str = "sealtensors.policy";

/// What the policy decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// `data.sealtensors.allow` is `true`.
    Allow,
    /// Anything else; the reasons come from `data.sealtensors.deny_reasons`.
    Deny {
        /// Why, in the policy's words (never empty).
        reasons: Vec<String>,
    },
}

impl Decision {
    /// Whether access is allowed.
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow)
    }
}

/// What the caller tells the policy about this load (SPEC §3.6). Everything
/// else in the input document (time, host, model, file) is filled in by the
/// library.
#[derive(Debug, Clone, Default)]
pub struct PolicyContext {
    /// Licence claims (a JSON object). `None`: read from `SEALTENSORS_LICENCE`
    /// (inline JSON, or the path of a JSON file); absent there too: `{}`.
    pub licence: Option<Value>,
    /// Attestation claims (a JSON object); empty locally, a key broker fills them.
    pub attestation: Option<Value>,
    /// The language runtime (`"rust"` by default; the Python bindings say `"python"`).
    pub runtime: Option<String>,
    /// The runtime's version.
    pub runtime_version: Option<String>,
    /// The framework that loads the tensors (`torch`, `numpy`, `transformers`, `vllm`).
    pub framework: Option<String>,
    /// The framework's version.
    pub framework_version: Option<String>,
    /// The tensors requested; `None` requests every tensor of the file.
    pub requested: Option<Vec<String>>,
}

/// A compiled policy, ready to evaluate.
#[derive(Clone)]
pub struct Policy {
    engine: regorus::Engine,
    dialect: Dialect,
}

/// Whose policy it is: its package, decision and reasons rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    /// sealtensors' own (SPEC §3.4): `data.sealtensors.allow`.
    Sealtensors,
    /// A CryptoTensors file's local policy (SPEC A.3): `data.model.allow`.
    CryptoTensors,
}

impl Dialect {
    fn package(self) -> &'static str {
        match self {
            Dialect::Sealtensors => "data.sealtensors",
            Dialect::CryptoTensors => "data.model",
        }
    }
    fn decision(self) -> &'static str {
        match self {
            Dialect::Sealtensors => DECISION_RULE,
            Dialect::CryptoTensors => CRYPTOTENSORS_DECISION_RULE,
        }
    }
    fn reasons(self) -> &'static str {
        match self {
            Dialect::Sealtensors => REASONS_RULE,
            Dialect::CryptoTensors => "data.model.deny_reasons",
        }
    }
}

/// The decision of a CryptoTensors file's local policy (SPEC A.3).
pub const CRYPTOTENSORS_DECISION_RULE: &str = "data.model.allow";

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Policy")
    }
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::PolicyInvalid {
        reason: reason.into(),
    }
}

/// Why a compile failed: a missing decision rule is its own case, because
/// readers report it as `PolicyUnsupported` (a policy written for a decision
/// this version does not know) and writers as `PolicyInvalid`.
#[derive(Debug)]
pub enum CompileError {
    /// The text has no `data.sealtensors.allow` rule.
    NoDecision,
    /// Anything else (with the error to return).
    Other(Error),
}

impl From<CompileError> for Error {
    fn from(e: CompileError) -> Error {
        match e {
            CompileError::NoDecision => invalid(format!(
                "it defines no {DECISION_RULE} rule (write `package sealtensors` and an `allow` rule)"
            )),
            CompileError::Other(e) => e,
        }
    }
}

impl Policy {
    /// Check the text against the limits and the builtin profile, parse it
    /// and check that it defines `data.sealtensors.allow`.
    pub fn compile(text: &str) -> Result<Policy, CompileError> {
        Self::compile_as(text, Dialect::Sealtensors)
    }

    /// [`compile`](Self::compile) for a CryptoTensors file's local policy:
    /// the same limits and profile, the decision `data.model.allow`
    /// (`package model`, an `allow` rule) and optional reasons
    /// `data.model.deny_reasons`.
    pub fn compile_cryptotensors(text: &str) -> Result<Policy> {
        Self::compile_as(text, Dialect::CryptoTensors).map_err(|e| match e {
            CompileError::NoDecision => invalid(format!(
                "this CryptoTensors policy defines no {CRYPTOTENSORS_DECISION_RULE} rule (`package model` and an `allow` rule)"
            )),
            CompileError::Other(e) => e,
        })
    }

    /// The limits and the profile (hostile text is checked before it is
    /// parsed), then the parse, for `dialect`'s decision rule.
    fn compile_as(text: &str, dialect: Dialect) -> Result<Policy, CompileError> {
        if text.len() > MAX_POLICY_BYTES {
            return Err(CompileError::Other(Error::LimitExceeded {
                what: "policy text bytes",
                got: text.len() as u64,
                max: MAX_POLICY_BYTES as u64,
            }));
        }
        check_profile(text).map_err(CompileError::Other)?;
        Self::compile_checked(text, dialect)
    }

    /// Parse text that passed [`check_profile`], into an engine where every
    /// builtin outside the profile is a refusal.
    fn compile_checked(text: &str, dialect: Dialect) -> Result<Policy, CompileError> {
        let r = catch_unwind(AssertUnwindSafe(|| -> Result<Policy, CompileError> {
            let mut engine = regorus::Engine::new();
            engine.set_policy_length_config(regorus::utils::limits::PolicyLengthConfig {
                max_col: NonZeroU32::new(4096).expect("non-zero"),
                max_file_bytes: NonZeroUsize::new(MAX_POLICY_BYTES).expect("non-zero"),
                max_lines: NonZeroUsize::new(MAX_POLICY_BYTES).expect("non-zero"),
            });
            engine.set_execution_timer_config(regorus::utils::limits::ExecutionTimerConfig {
                limit: EVAL_TIME_LIMIT,
                check_interval: NonZeroU32::new(1).expect("non-zero"),
            });
            engine.set_strict_builtin_errors(true);
            // `concat` is the one allowed builtin whose output can be far
            // larger than any input (n copies of a big string), in a single
            // step the timer cannot interrupt: replace it by a capped one.
            engine
                .add_extension("concat".into(), 2, Box::new(capped_concat))
                .map_err(|e| CompileError::Other(invalid(e.to_string())))?;
            // `glob.match` multiplies its inputs by its delimiter list in one
            // step: replaced by a version that bounds them.
            engine
                .add_extension("glob.match".into(), 3, Box::new(capped_glob_match))
                .map_err(|e| CompileError::Other(invalid(e.to_string())))?;
            // Every other builtin outside the profile resolves to a refusal:
            // regorus looks up extensions before builtins, so whatever name a
            // call reaches, it can only run an allowed builtin (a second line
            // behind `check_profile`).
            for name in builtin_names() {
                if ALLOWED_BUILTINS.contains(name) {
                    continue;
                }
                let nargs = regorus::unstable::BUILTINS.get(name).map_or(1, |(_, n)| *n);
                let refuse = move |_: Vec<regorus::Value>| -> anyhow::Result<regorus::Value> {
                    anyhow::bail!("{name} is not among the builtins a sealtensors policy may use")
                };
                engine
                    .add_extension((*name).to_string(), nargs, Box::new(refuse))
                    .map_err(|e| CompileError::Other(invalid(e.to_string())))?;
            }
            let package = engine
                .add_policy(SOURCE_NAME.into(), text.into())
                .map_err(|e| CompileError::Other(invalid(format!("it does not parse: {e}"))))?;
            if package != dialect.package() {
                // Another package may still not define the decision.
                return Err(CompileError::NoDecision);
            }
            match engine.has_declared_rule_rooted_at(SOURCE_NAME, "allow") {
                Ok(true) => {}
                Ok(false) => return Err(CompileError::NoDecision),
                Err(e) => return Err(CompileError::Other(invalid(e.to_string()))),
            }
            Ok(Policy { engine, dialect })
        }));
        r.unwrap_or_else(|_| {
            Err(CompileError::Other(invalid(
                "the policy compiler failed on it (internal error); refusing it",
            )))
        })
    }

    /// Evaluate the decision and, when it denies, the reasons.
    pub fn evaluate(&mut self, input: &Value) -> Result<Decision> {
        self.evaluate_value(regorus::Value::from(input.clone()))
    }

    /// Evaluate for a file: the input document of [`input_document`], with
    /// `request.tensors` converted straight from the names (a model of
    /// thousands of tensors would otherwise go through JSON twice).
    pub(crate) fn evaluate_for_file<'a>(
        &mut self,
        ctx: &PolicyContext,
        model: &ModelInfo,
        file_name: Option<&str>,
        tensors: impl IntoIterator<Item = &'a str>,
        now: u64,
    ) -> Result<Decision> {
        let mut input = regorus::Value::from(input_document(
            ctx,
            model,
            file_name,
            std::iter::empty(),
            now,
        )?);
        if ctx.requested.is_none() {
            let names: Vec<regorus::Value> =
                tensors.into_iter().map(regorus::Value::from).collect();
            let request = input["request"].clone();
            let mut request = request;
            if let Ok(o) = request.as_object_mut() {
                o.insert(regorus::Value::from("tensors"), regorus::Value::from(names));
            }
            if let Ok(o) = input.as_object_mut() {
                o.insert(regorus::Value::from("request"), request);
            }
        }
        self.evaluate_value(input)
    }

    fn evaluate_value(&mut self, input: regorus::Value) -> Result<Decision> {
        let engine = &mut self.engine;
        let dialect = self.dialect;
        let r = catch_unwind(AssertUnwindSafe(|| -> Result<Decision> {
            engine.set_input(input);
            let allow = engine
                .eval_rule(dialect.decision().into())
                .map_err(eval_error)?;
            if allow == regorus::Value::Bool(true) {
                return Ok(Decision::Allow);
            }
            let mut reasons = Vec::new();
            // The reasons rule is optional: an error means it is absent.
            if let Ok(v) = engine.eval_rule(dialect.reasons().into()) {
                let items: Vec<regorus::Value> = match &v {
                    regorus::Value::Set(s) => s.iter().cloned().collect(),
                    regorus::Value::Array(a) => a.iter().cloned().collect(),
                    _ => Vec::new(),
                };
                for item in items {
                    match item {
                        regorus::Value::String(s) => reasons.push(s.to_string()),
                        other => reasons.push(other.to_string()),
                    }
                }
            }
            if reasons.is_empty() {
                reasons.push(match allow {
                    regorus::Value::Undefined => {
                        "the policy's allow rule is undefined for this input".to_string()
                    }
                    v => format!("the policy's allow rule is {v}, not true"),
                });
            }
            Ok(Decision::Deny { reasons })
        }));
        r.unwrap_or_else(|_| {
            Err(invalid(
                "the policy evaluator failed on it (internal error); refusing access",
            ))
        })
    }
}

/// Longest string a policy may build with `concat` (SPEC §3.4).
pub const MAX_POLICY_STRING_BYTES: usize = 64 * 1024;

/// `concat(delimiter, strings)` with its output size checked before anything
/// is allocated (found in review: an uncapped `concat` asked for 100 GB and
/// aborted the process).
fn capped_concat(args: Vec<regorus::Value>) -> anyhow::Result<regorus::Value> {
    let [delim, coll] = args.as_slice() else {
        anyhow::bail!("concat takes 2 arguments");
    };
    let delim = delim.as_string()?;
    let items: Vec<&regorus::Value> = match coll {
        regorus::Value::Array(a) => a.iter().collect(),
        regorus::Value::Set(s) => s.iter().collect(),
        _ => anyhow::bail!("concat: the second argument must be an array or a set of strings"),
    };
    let mut total = delim.len().saturating_mul(items.len().saturating_sub(1));
    let mut parts = Vec::with_capacity(items.len());
    for v in items {
        let s = v.as_string()?;
        total = total.saturating_add(s.len());
        if total > MAX_POLICY_STRING_BYTES {
            anyhow::bail!(
                "concat would build more than {MAX_POLICY_STRING_BYTES} bytes, the most a policy may"
            );
        }
        parts.push(s.as_ref());
    }
    Ok(regorus::Value::from(parts.join(delim.as_ref())))
}

/// Most entries in the delimiter list of a `glob.match` call (SPEC §9).
pub const MAX_GLOB_DELIMITERS: usize = 16;
/// Longest pattern of a `glob.match` call, in bytes (SPEC §9).
pub const MAX_GLOB_PATTERN_BYTES: usize = 4096;

/// `glob.match(pattern, delimiters, value)`, as regorus 0.14 computes it
/// (`src/builtins/glob.rs`), with its inputs bounded first. regorus rewrites
/// both strings once per delimiter-list entry, each pass replacing every
/// occurrence of the delimiter by three bytes: a list of the same delimiter
/// repeated n times grows a string by a factor 1 + 2n (found in review: a
/// 64 KiB string and 100,000 delimiters is a 13 GB string, built in one call
/// the timer cannot interrupt). With at most [`MAX_GLOB_DELIMITERS`] entries
/// a string grows at most 33 times.
fn capped_glob_match(args: Vec<regorus::Value>) -> anyhow::Result<regorus::Value> {
    const PLACE_HOLDER: &str = "\0";
    let [pattern, delims, value] = args.as_slice() else {
        anyhow::bail!("glob.match takes 3 arguments");
    };
    let pattern = pattern.as_string()?.to_string();
    let value = value.as_string()?.to_string();
    if pattern.len() > MAX_GLOB_PATTERN_BYTES {
        anyhow::bail!(
            "glob.match: the pattern is longer than {MAX_GLOB_PATTERN_BYTES} bytes, the most a policy may use"
        );
    }
    let (pattern, value) = match delims {
        regorus::Value::Null => (
            pattern.replace('/', PLACE_HOLDER),
            value.replace('/', PLACE_HOLDER),
        ),
        regorus::Value::Array(a) => {
            if a.len() > MAX_GLOB_DELIMITERS {
                anyhow::bail!(
                    "glob.match: more than {MAX_GLOB_DELIMITERS} delimiters, the most a policy may use"
                );
            }
            let mut chars = Vec::with_capacity(a.len());
            for d in a.iter() {
                let d = d.as_string()?;
                if d.len() > 1 {
                    anyhow::bail!("glob.match: delimiters must be single character");
                }
                chars.extend(d.chars().next());
            }
            if chars.is_empty() {
                chars.push('.');
            }
            let unix_style = |s: &str| -> anyhow::Result<String> {
                if s.contains(PLACE_HOLDER) {
                    anyhow::bail!("glob.match: string contains internal glob placeholder");
                }
                let mut s = if chars.contains(&'/') {
                    s.to_string()
                } else {
                    s.replace('/', PLACE_HOLDER)
                };
                for d in &chars {
                    if *d == ':' {
                        s = s.replace(*d, PLACE_HOLDER);
                    } else if *d != '/' {
                        s = s.replace(*d, &format!("/{d}/"));
                    }
                }
                Ok(s)
            };
            (unix_style(&pattern)?, unix_style(&value)?)
        }
        _ => anyhow::bail!("glob.match requires string array"),
    };
    Ok(regorus::Value::Bool(
        glob_matcher(&pattern)?.is_match(value.as_str()),
    ))
}

/// A compiled glob, cached per process (a template matches every tensor
/// name against the same few patterns); the cache holds at most 256 short
/// patterns.
fn glob_matcher(pattern: &str) -> anyhow::Result<globset::GlobMatcher> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static CACHE: OnceLock<Mutex<HashMap<String, globset::GlobMatcher>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(m) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(pattern) {
        return Ok(m.clone());
    }
    let m = globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|_| anyhow::anyhow!("invalid glob"))?
        .compile_matcher();
    if pattern.len() <= 1024 {
        let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
        if c.len() >= 256 {
            c.clear();
        }
        c.insert(pattern.to_string(), m.clone());
    }
    Ok(m)
}

fn eval_error(e: anyhow::Error) -> Error {
    if let Some(regorus::utils::limits::LimitError::TimeLimitExceeded { .. }) =
        e.downcast_ref::<regorus::utils::limits::LimitError>()
    {
        return invalid(format!(
            "its evaluation ran past the time limit of {} ms",
            EVAL_TIME_LIMIT.as_millis()
        ));
    }
    let msg = e.to_string();
    if msg.contains("time limit") || msg.contains("TimeLimitExceeded") {
        return invalid(format!(
            "its evaluation ran past the time limit of {} ms",
            EVAL_TIME_LIMIT.as_millis()
        ));
    }
    invalid(format!("its evaluation failed: {msg}"))
}

// ---- the builtin profile ------------------------------------------------------------

const KEYWORDS: &[&str] = &[
    "as", "contains", "default", "else", "every", "false", "if", "import", "in", "not", "null",
    "package", "some", "true", "with",
];

/// Every name that regorus would resolve to a builtin (all of its compiled-in
/// builtins, `print`, and the allowed ones), read once from regorus itself so
/// that a regorus feature turned on elsewhere in a build cannot add a builtin
/// this check does not know.
fn builtin_names() -> &'static BTreeSet<&'static str> {
    static NAMES: OnceLock<BTreeSet<&'static str>> = OnceLock::new();
    NAMES.get_or_init(|| {
        let mut names: BTreeSet<&'static str> =
            regorus::unstable::BUILTINS.keys().copied().collect();
        names.insert("print");
        names.extend(ALLOWED_BUILTINS.iter().copied());
        names
    })
}

/// The parse-work weight of one token inside a bracket of this kind
/// (see [`MAX_POLICY_PARSE_WORK`]).
fn bracket_weight(open: u8) -> u64 {
    match open {
        b'(' => PARSE_WORK_FACTOR_PAREN,
        _ => PARSE_WORK_FACTOR_BRACKET,
    }
}

/// A small Rego tokenizer, enough to bound the parser's work and to find
/// every reference that is called: comments, strings and raw strings are
/// skipped, dotted names are joined, numbers are read whole. It
/// over-approximates: anything it cannot classify as an allowed call is
/// refused (fail closed).
///
/// The resolution rule (SPEC §3.4): a called name that is the name of any
/// builtin must be in [`ALLOWED_BUILTINS`], whatever the policy defines; no
/// rule, function or import alias may take the name of a builtin; any other
/// called name must be a plain name the policy defines or a `data.` path.
fn check_profile(text: &str) -> Result<()> {
    #[derive(PartialEq)]
    enum Tok {
        Name(String, bool),
        Open(u8),
        Close(u8),
        Newline,
        /// A string or number literal.
        Lit,
        Other,
    }
    let b = text.as_bytes();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'\n' => {
                toks.push(Tok::Newline);
                i += 1;
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
                toks.push(Tok::Lit);
            }
            b'`' => {
                i += 1;
                while i < b.len() && b[i] != b'`' {
                    i += 1;
                }
                i += 1;
                toks.push(Tok::Lit);
            }
            b'(' | b'[' | b'{' => {
                toks.push(Tok::Open(c));
                i += 1;
            }
            b')' | b']' | b'}' => {
                toks.push(Tok::Close(c));
                i += 1;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                // A name, with dotted parts; `after_dot` marks a name that
                // continues a longer reference (`x[0].f`).
                let after_dot = i > 0 && b[i - 1] == b'.';
                let start = i;
                loop {
                    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                        i += 1;
                    }
                    if i + 1 < b.len()
                        && b[i] == b'.'
                        && (b[i + 1].is_ascii_alphabetic() || b[i + 1] == b'_')
                    {
                        i += 1;
                        continue;
                    }
                    break;
                }
                toks.push(Tok::Name(text[start..i].to_string(), after_dot));
            }
            c if c.is_ascii_digit() => {
                // A number, read as regorus's lexer reads one: digits, a
                // fraction, an exponent. regorus turns a literal with an
                // exponent into an exact integer, computing 10^exponent before
                // any timer runs (`0e999999999` passes its range check and
                // would take minutes): the exponent is bounded.
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                if i + 1 < b.len() && b[i] == b'.' && b[i + 1].is_ascii_digit() {
                    i += 1;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                }
                if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
                    i += 1;
                    if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
                        i += 1;
                    }
                    let start = i;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                    let digits = text[start..i].trim_start_matches('0');
                    if digits.len() > 3
                        || digits.parse::<u32>().unwrap_or(0) > MAX_POLICY_NUMBER_EXPONENT
                    {
                        return Err(invalid(format!(
                            "it writes a number with an exponent beyond \
                             {MAX_POLICY_NUMBER_EXPONENT}"
                        )));
                    }
                }
                toks.push(Tok::Lit);
            }
            c if c.is_ascii_whitespace() => i += 1,
            _ => {
                toks.push(Tok::Other);
                i += 1;
            }
        }
    }
    // Bound the parser's work before it sees the text. Nesting: its cost
    // grows geometrically with depth. Work: every token costs the product of
    // the weights of the brackets around it, summed over the text, so that
    // many moderately nested rules are bounded too (review: 2,000 rules
    // nested 10 deep, 64 KiB, took 34 s to parse).
    let mut stack: Vec<u64> = Vec::new();
    let mut weight = 1u64;
    let mut work = 0u64;
    for t in &toks {
        work = work.saturating_add(weight);
        match t {
            Tok::Open(c) => {
                if stack.len() >= MAX_POLICY_NESTING {
                    return Err(invalid(format!(
                        "it nests brackets more than {MAX_POLICY_NESTING} deep"
                    )));
                }
                stack.push(weight);
                weight = weight.saturating_mul(bracket_weight(*c));
            }
            Tok::Close(_) => weight = stack.pop().unwrap_or(1),
            _ => {}
        }
    }
    if work > MAX_POLICY_PARSE_WORK {
        return Err(invalid(format!(
            "it would take too much work to parse ({work} units of bracket-weighted tokens, \
             more than {MAX_POLICY_PARSE_WORK}): nest less, or write fewer rules"
        )));
    }
    // Names the module defines: the first name of a statement at depth 0,
    // and import aliases. A line that follows an operator or a keyword that
    // needs more (`allow if` and the body on the next line) continues its
    // statement.
    const CONTINUES: &[&str] = &[
        "as", "contains", "default", "else", "every", "if", "import", "in", "not", "package",
        "some", "with",
    ];
    let builtins = builtin_names();
    let mut defined = BTreeSet::new();
    let mut depth = 0i64;
    let mut at_start = true;
    let mut prev_as = false;
    let mut last: Option<&Tok> = None;
    for t in &toks {
        let is_as = matches!(t, Tok::Name(n, _) if n == "as");
        if *t != Tok::Newline {
            last = Some(t);
        }
        match t {
            Tok::Newline => {
                at_start = match last {
                    Some(Tok::Name(n, _)) => !CONTINUES.contains(&n.as_str()),
                    Some(Tok::Other) => false,
                    _ => true,
                }
            }
            Tok::Open(_) => {
                depth += 1;
                at_start = false;
            }
            Tok::Close(_) => {
                depth -= 1;
                at_start = false;
            }
            Tok::Name(n, _) if prev_as => {
                defined.insert(n.as_str());
                at_start = false;
            }
            Tok::Name(n, _) if depth == 0 && at_start => {
                if n == "default" {
                    prev_as = false;
                    continue;
                }
                if !KEYWORDS.contains(&n.as_str()) {
                    defined.insert(n.as_str());
                }
                at_start = false;
            }
            _ => at_start = false,
        }
        prev_as = is_as;
    }
    // No definition may take a builtin's name (found in review: `sprintf := 1`
    // made the check accept `sprintf(...)`, which regorus then resolved to the
    // builtin, since the rule is not a function).
    for n in &defined {
        let first = n.split('.').next().unwrap_or("");
        if let Some(b) = [*n, first].into_iter().find(|x| builtins.contains(x)) {
            return Err(invalid(format!(
                "it defines {n}, which takes the name of the builtin {b}; \
                 sealtensors policies may not shadow builtins (SPEC §3.4)"
            )));
        }
    }
    let defined_first: BTreeSet<&str> = defined
        .iter()
        .map(|n| n.split('.').next().unwrap_or(""))
        .collect();
    let allowed: BTreeSet<&str> = ALLOWED_BUILTINS.iter().copied().collect();
    let mut prev: Option<&Tok> = None;
    let mut iter = toks.iter().filter(|t| **t != Tok::Newline).peekable();
    while let Some(t) = iter.next() {
        let next_is_call = matches!(iter.peek(), Some(Tok::Open(b'(')));
        match t {
            Tok::Name(n, _) if n == "with" => {
                return Err(invalid(
                    "it uses `with`, which sealtensors policies may not use",
                ))
            }
            Tok::Name(n, after_dot) if next_is_call && !KEYWORDS.contains(&n.as_str()) => {
                let ok = !after_dot
                    && if builtins.contains(n.as_str()) {
                        // Resolved against the fixed list, whatever the policy defines.
                        allowed.contains(n.as_str())
                    } else {
                        n.starts_with("data.")
                            || (!n.contains('.') && defined_first.contains(n.as_str()))
                    };
                if !ok {
                    return Err(invalid(format!(
                        "it calls {n}, which is not among the builtins a sealtensors policy may use \
                         (SPEC §3.4: {})",
                        ALLOWED_BUILTINS.join(", ")
                    )));
                }
            }
            Tok::Open(b'(') if matches!(prev, Some(Tok::Close(b']'))) => {
                return Err(invalid(
                    "it calls a computed reference, which sealtensors policies may not do",
                ))
            }
            _ => {}
        }
        prev = Some(t);
    }
    Ok(())
}

// ---- the input document ---------------------------------------------------------------

/// This machine's identity, read once per process.
#[derive(Debug, Clone)]
pub struct HostInfo {
    /// The host name (`/proc/sys/kernel/hostname`, `/etc/hostname` or `$HOSTNAME`).
    pub hostname: Option<String>,
    /// The machine id (`/etc/machine-id`, else `/var/lib/dbus/machine-id`).
    pub machine_id: Option<String>,
}

/// This machine's host name and machine id (cached).
pub fn host_info() -> &'static HostInfo {
    static HOST: OnceLock<HostInfo> = OnceLock::new();
    HOST.get_or_init(|| {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        HostInfo {
            hostname: read("/proc/sys/kernel/hostname")
                .or_else(|| read("/etc/hostname"))
                .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty())),
            machine_id: read("/etc/machine-id").or_else(|| read("/var/lib/dbus/machine-id")),
        }
    })
}

/// Licence claims from `SEALTENSORS_LICENCE`: inline JSON (starting with
/// `{`) or the path of a JSON file. `None` when the variable is unset.
pub fn licence_from_env() -> Result<Option<Value>> {
    match std::env::var(LICENCE_ENV) {
        Ok(v) if !v.trim().is_empty() => licence_from_str_or_path(&v).map(Some),
        _ => Ok(None),
    }
}

/// Parse licence claims: inline JSON, or else the path of a JSON file.
pub fn licence_from_str_or_path(v: &str) -> Result<Value> {
    let text = if v.trim_start().starts_with('{') {
        v.to_string()
    } else {
        std::fs::read_to_string(v).map_err(|e| Error::Licence(format!("reading {v}: {e}")))?
    };
    let j: Value =
        serde_json::from_str(&text).map_err(|e| Error::Licence(format!("not JSON: {e}")))?;
    if !j.is_object() {
        return Err(Error::Licence("the claims must be a JSON object".into()));
    }
    Ok(j)
}

/// The input document a policy sees (SPEC §3.6).
///
/// `tensors` are the names of the file's tensors; when the caller requests
/// no subset, `request.tensors` lists them all and `request.all` is true.
pub fn input_document<'a>(
    ctx: &PolicyContext,
    model: &ModelInfo,
    file_name: Option<&str>,
    tensors: impl IntoIterator<Item = &'a str>,
    now: u64,
) -> Result<Value> {
    let host = host_info();
    let licence = match &ctx.licence {
        Some(l) => l.clone(),
        None => licence_from_env()?.unwrap_or_else(|| json!({})),
    };
    let requested: Vec<Value> = match &ctx.requested {
        Some(r) => r.iter().map(|s| Value::String(s.clone())).collect(),
        None => tensors
            .into_iter()
            .map(|s| Value::String(s.to_string()))
            .collect(),
    };
    Ok(json!({
        "version": INPUT_VERSION,
        "time": {"unix": now, "rfc3339": rfc3339(now)},
        "host": {"hostname": host.hostname, "machine_id": host.machine_id},
        "process": {
            "runtime": ctx.runtime.clone().unwrap_or_else(|| "rust".into()),
            "runtime_version": ctx.runtime_version.clone().or_else(|| Some(env!("CARGO_PKG_VERSION").to_string())),
            "sealtensors_version": env!("CARGO_PKG_VERSION"),
            "framework": ctx.framework,
            "framework_version": ctx.framework_version,
        },
        "model": {
            "id": model.id,
            "version": model.version,
            "name": model.id.rsplit('/').next().unwrap_or(""),
            "created": model.created,
            "expires": model.expires,
        },
        "file": {"name": file_name},
        "request": {"all": ctx.requested.is_none(), "tensors": requested},
        "licence": licence,
        "attestation": ctx.attestation.clone().unwrap_or_else(|| json!({})),
        // Who evaluates: the loader itself, or a key broker (which replaces
        // this with "broker"), so a policy can require broker-only claims
        // such as attestation without refusing the loader's own check.
        "evaluator": "loader",
    }))
}

// ---- time ----------------------------------------------------------------------------------

/// Unix seconds as RFC 3339 in UTC (`2020-01-01T00:00:00Z`).
pub fn rfc3339(t: u64) -> String {
    let days = (t / 86400) as i64;
    let secs = t % 86400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// Parse an RFC 3339 date-time (`2027-01-01T00:00:00Z`, an offset, optional
/// fractional seconds) or a plain date (`2027-01-01`, midnight UTC) into
/// Unix seconds (fractions dropped).
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let s = s.trim();
    let num = |t: &str| -> Option<i64> {
        (!t.is_empty() && t.bytes().all(|c| c.is_ascii_digit()))
            .then(|| t.parse().ok())
            .flatten()
    };
    let (date, rest) = match s.find(['T', 't', ' ']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mut dp = date.split('-');
    let (y, m, d) = (num(dp.next()?)?, num(dp.next()?)?, num(dp.next()?)?);
    if dp.next().is_some() || date.len() != 10 || !(1..=12).contains(&m) {
        return None;
    }
    let month_days = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let max_d = if m == 2 && leap {
        29
    } else {
        month_days[(m - 1) as usize]
    };
    if !(1..=max_d).contains(&d) {
        return None;
    }
    let mut secs = days_from_civil(y, m, d) * 86400;
    if let Some(rest) = rest {
        let (clock, offset) = if let Some(r) = rest.strip_suffix(['Z', 'z']) {
            (r, 0)
        } else {
            let i = rest.rfind(['+', '-'])?;
            let (c, o) = rest.split_at(i);
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let mut op = o[1..].split(':');
            let (oh, om) = (num(op.next()?)?, num(op.next()?)?);
            if op.next().is_some() || oh > 23 || om > 59 {
                return None;
            }
            (c, sign * (oh * 3600 + om * 60))
        };
        let clock = clock.split('.').next()?;
        let mut cp = clock.split(':');
        let (h, mi, se) = (num(cp.next()?)?, num(cp.next()?)?, num(cp.next()?)?);
        if cp.next().is_some() || h > 23 || mi > 59 || se > 60 {
            return None;
        }
        secs += h * 3600 + mi * 60 + se - offset;
    }
    u64::try_from(secs).ok()
}

// ---- templates ---------------------------------------------------------------------------

/// The licence templates that ship with sealtensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    /// Opens until a date (`not_after`).
    Expiry,
    /// Opens only on the machines listed (machine ids).
    Machines,
    /// Opens only inside the frameworks listed.
    Frameworks,
    /// Only tensors matching the patterns listed may be requested.
    Tensors,
}

/// The parameters of a template; each template uses its own.
#[derive(Debug, Clone, Default)]
pub struct TemplateParams {
    /// `expiry`: the last moment of validity, RFC 3339 or a date.
    pub not_after: Option<String>,
    /// `machines`: allowed machine ids.
    pub machines: Vec<String>,
    /// `frameworks`: allowed framework names.
    pub frameworks: Vec<String>,
    /// `tensors`: allowed tensor name patterns (globs).
    pub tensors: Vec<String>,
}

impl Template {
    /// Every template, for listings.
    pub const ALL: [Template; 4] = [
        Template::Expiry,
        Template::Machines,
        Template::Frameworks,
        Template::Tensors,
    ];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Template::Expiry => "expiry",
            Template::Machines => "machines",
            Template::Frameworks => "frameworks",
            Template::Tensors => "tensors",
        }
    }

    /// The template by name.
    pub fn from_name(s: &str) -> Option<Template> {
        Template::ALL.into_iter().find(|t| t.name() == s)
    }

    fn source(self) -> &'static str {
        match self {
            Template::Expiry => include_str!("policy/templates/expiry.rego"),
            Template::Machines => include_str!("policy/templates/machines.rego"),
            Template::Frameworks => include_str!("policy/templates/frameworks.rego"),
            Template::Tensors => include_str!("policy/templates/tensors.rego"),
        }
    }

    /// Fill the template. Every parameter is written as a JSON literal
    /// (which Rego reads as the same value), never spliced in as text.
    pub fn render(self, p: &TemplateParams) -> Result<String> {
        let lit = |v: &Value| serde_json::to_string(v).map_err(|e| invalid(e.to_string()));
        let list = |what: &str, v: &[String]| -> Result<String> {
            if v.is_empty() {
                return Err(Error::Config(format!(
                    "the {} template needs at least one {what}",
                    self.name()
                )));
            }
            lit(&json!(v))
        };
        let fill = |k: &str, v: &str, text: String| text.replace(&format!("{{{{{k}}}}}"), v);
        let src = self.source().to_string();
        let text = match self {
            Template::Expiry => {
                let na = p.not_after.as_deref().ok_or_else(|| {
                    Error::Config("the expiry template needs a not-after date".into())
                })?;
                let unix = parse_rfc3339(na).ok_or_else(|| {
                    Error::Config(format!(
                        "{na:?} is not an RFC 3339 date or date-time (e.g. 2027-01-01 or 2027-01-01T00:00:00Z)"
                    ))
                })?;
                let src = fill("not_after", &lit(&json!(rfc3339(unix)))?, src);
                fill("not_after_unix", &unix.to_string(), src)
            }
            Template::Machines => fill("machines", &list("machine id", &p.machines)?, src),
            Template::Frameworks => fill("frameworks", &list("framework", &p.frameworks)?, src),
            Template::Tensors => fill("tensors", &list("tensor pattern", &p.tensors)?, src),
        };
        // What ships must compile.
        Policy::compile(&text)?;
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The second line of the profile: even text that `check_profile` never
    /// saw cannot run a builtin outside the list.
    #[test]
    fn builtins_outside_the_profile_are_refusals_in_the_engine() {
        for call in [
            "sprintf(\"%999999999999d\", [1]) != \"\"",
            "count(numbers.range(0, 100000000000)) > 0",
            "replace(\"a\", \"a\", \"bb\") != \"\"",
            "strings.replace_n({\"a\": \"bb\"}, \"a\") != \"\"",
            "format_int(1, 10) != \"\"",
            "print(1)",
        ] {
            let text =
                format!("package sealtensors\nimport rego.v1\nsprintf := 1\nallow if {call}\n");
            let mut p = match Policy::compile_checked(&text, Dialect::Sealtensors) {
                Ok(p) => p,
                Err(e) => panic!("{call}: {:?}", Error::from(e)),
            };
            match p.evaluate(&json!({})) {
                Err(Error::PolicyInvalid { reason }) => {
                    assert!(
                        reason.contains("not among the builtins"),
                        "{call}: {reason}"
                    )
                }
                other => panic!("{call}: expected a refusal, got {other:?}"),
            }
        }
    }

    /// Every allowed name is a builtin regorus has (or one replaced here).
    #[test]
    fn every_allowed_builtin_exists() {
        for name in ALLOWED_BUILTINS {
            assert!(
                regorus::unstable::BUILTINS.contains_key(name),
                "{name} is not a regorus builtin"
            );
        }
    }

    /// The bounded `glob.match` answers as regorus's own.
    #[test]
    fn capped_glob_match_agrees_with_regorus() {
        let cases = [
            ("*", "null", "a/b"),
            ("a/*", "null", "a/b"),
            ("a*", "null", "a/b"),
            ("model.*.w", "null", "model.layers.0.w"),
            ("model.*.w", "[\".\"]", "model.layers.0.w"),
            ("model.*.w", "[\".\"]", "model.x.w"),
            ("model.**.w", "[\".\"]", "model.layers.0.w"),
            ("a:*", "[\":\"]", "a:b"),
            ("a:*", "[\":\", \"/\"]", "a:b/c"),
            ("a/*", "[]", "a/b/c"),
            ("a/*", "[\"/\"]", "a/b/c"),
            ("a.?", "[\".\", \".\"]", "a.b"),
            ("{a,b}.c", "[\".\"]", "b.c"),
            ("[ab]*", "[\"-\"]", "b-c"),
            ("x\\*", "null", "x*"),
            ("[", "null", "["),
        ];
        for (pattern, delims, value) in cases {
            let query = format!(
                "glob.match({}, {delims}, {})",
                serde_json::to_string(pattern).unwrap_or_default(),
                serde_json::to_string(value).unwrap_or_default()
            );
            let mut theirs = regorus::Engine::new();
            theirs.set_strict_builtin_errors(true);
            let want = theirs
                .eval_query(query.clone(), false)
                .map(|r| format!("{:?}", r.result.first().map(|x| &x.expressions[0].value)))
                .map_err(|_| ());
            let text = format!("package sealtensors\nimport rego.v1\nallow := {query}\n");
            let mut ours =
                Policy::compile(&text).unwrap_or_else(|e| panic!("{:?}", Error::from(e)));
            let got = ours
                .engine
                .eval_query(query.clone(), false)
                .map(|r| format!("{:?}", r.result.first().map(|x| &x.expressions[0].value)))
                .map_err(|_| ());
            assert_eq!(got, want, "{query}");
        }
    }
}
