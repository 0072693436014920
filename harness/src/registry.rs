//! The strategy registry: every decoding strategy by name, with its parameters (types, ranges,
//! defaults), the resources it needs (a draft model, Medusa heads) and its constructor.
//!
//! `generate`'s flags, `verify`, and the runner's TOML grids all go through [`StrategySpec`], so a
//! new strategy is one module in `strategies/` plus one [`StrategyDef`] in [`REGISTRY`]. Errors
//! name the parameter the way the user wrote it: `--gamma` on the command line,
//! `strategies[3].gamma` in a config (the caller passes a [`Place`]).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Result};
use decodebench_strategies::beam::{self, BeamConfig, EarlyStopping};
use decodebench_strategies::lookup::{self, LookupAcceptance, LookupConfig, LookupState};
use decodebench_strategies::medusa::{self, AcceptanceRule, MedusaConfig, TreeTopology, DEFAULT_MAX_TOP_K};
use decodebench_strategies::sampler::{Sampler, SamplingConfig};
use decodebench_strategies::speculative::{self, GammaSchedule, SpecAcceptance, SpeculativeConfig};
use decodebench_strategies::{autoregressive, Generation, StopConfig};
use decodebench_tables::records::ConfigKey;
use serde_json::Value;

use crate::decoding::Models;

/// The type and range of one parameter.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Int {
        min: i64,
        max: i64,
    },
    /// An integer or `none`.
    OptInt {
        min: i64,
        max: i64,
    },
    Float {
        min: f64,
        max: f64,
    },
    /// A number or `none`.
    OptFloat {
        min: f64,
        max: f64,
    },
    Choice(&'static [&'static str]),
    Bool,
    /// Free text, checked by the strategy (e.g. a tree name or file).
    Text,
}

/// A parameter's default.
#[derive(Debug, Clone, Copy)]
pub enum Default {
    Int(i64),
    Float(f64),
    Str(&'static str),
    Bool(bool),
    None,
}

#[derive(Debug)]
pub struct ParamDef {
    /// The name in configs and labels (`gamma`, `schedule`).
    pub name: &'static str,
    /// The command-line flag (`--gamma`, `--gamma-schedule`).
    pub flag: &'static str,
    pub kind: Kind,
    pub default: Default,
    pub help: &'static str,
}

/// How a parameter is named in an error: as a flag, or at its place in a config file.
#[derive(Debug, Clone)]
pub enum Place {
    Cli,
    /// `<file>: strategies[<index>]`.
    Config {
        file: String,
        index: usize,
    },
}

impl Place {
    pub fn name(&self, p: &ParamDef) -> String {
        match self {
            Place::Cli => p.flag.to_string(),
            Place::Config { file, index } => format!("{file}: strategies[{index}].{}", p.name),
        }
    }

    fn strategy(&self) -> String {
        match self {
            Place::Cli => "--strategy".into(),
            Place::Config { file, index } => format!("{file}: strategies[{index}].name"),
        }
    }
}

/// Resolved parameter values, defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Params(BTreeMap<String, Value>);

impl Params {
    pub fn get(&self, name: &str) -> &Value {
        self.0.get(name).unwrap_or(&Value::Null)
    }
    pub fn int(&self, name: &str) -> i64 {
        self.get(name).as_i64().unwrap_or_default()
    }
    pub fn opt_int(&self, name: &str) -> Option<i64> {
        self.get(name).as_i64()
    }
    pub fn float(&self, name: &str) -> f64 {
        self.get(name).as_f64().unwrap_or_default()
    }
    pub fn opt_float(&self, name: &str) -> Option<f64> {
        self.get(name).as_f64()
    }
    pub fn text(&self, name: &str) -> &str {
        self.get(name).as_str().unwrap_or_default()
    }
    pub fn bool(&self, name: &str) -> bool {
        self.get(name).as_bool().unwrap_or_default()
    }
    fn usize(&self, name: &str) -> usize {
        self.int(name).max(0) as usize
    }
    fn sampling(&self, seed: u64) -> SamplingConfig {
        SamplingConfig {
            temperature: self.float("temperature"),
            top_k: self.opt_int("top_k").map(|k| k as usize),
            top_p: self.opt_float("top_p"),
            seed,
        }
    }
}

/// What a strategy is built with besides its parameters.
pub struct BuildContext {
    /// Heads of the loaded Medusa heads, when the run has heads.
    pub num_heads: Option<usize>,
    /// The target's forward-cost curve on this machine, (block tokens, ms), when calibrated.
    pub cost_curve: Option<Vec<(usize, f64)>>,
}

/// A strategy ready to decode: built once per configuration, called per turn. It may keep state
/// across calls (the lookup drafter's n-gram cache does).
pub trait Decoder {
    /// Decodes `prompt`; `seed` seeds this call's sampler (the runner derives it from the run's
    /// seed and the unit, so results do not depend on the order units ran in).
    fn generate(
        &mut self,
        models: Models<'_>,
        prompt: &[u32],
        stop: &StopConfig,
        seed: u64,
        on_token: &mut dyn FnMut(u32),
    ) -> Result<Generation>;
}

/// A check across parameters: `Err((parameter, reason))`. `given` holds the parameters the
/// user set, so a parameter that the other settings make meaningless is refused, not dropped.
type Check = fn(&Params, &BTreeSet<String>) -> std::result::Result<(), (&'static str, String)>;

/// One strategy of the registry.
pub struct StrategyDef {
    pub name: &'static str,
    pub summary: &'static str,
    pub params: &'static [ParamDef],
    pub needs_draft: bool,
    pub needs_heads: bool,
    /// Whether its tokens must equal greedy decoding's.
    pub lossless: fn(&Params) -> bool,
    pub check: Check,
    /// Derived facts added to the label (e.g. a tree's node count).
    pub derived: fn(&Params) -> Vec<(&'static str, Value)>,
    pub build: fn(&Params, &BuildContext) -> Result<Box<dyn Decoder>>,
}

impl StrategyDef {
    pub fn param(&self, name: &str) -> Option<&'static ParamDef> {
        self.params.iter().find(|p| p.name == name)
    }
    pub fn param_by_flag(&self, flag: &str) -> Option<&'static ParamDef> {
        self.params.iter().find(|p| p.flag == flag)
    }
    /// Whether it draws random numbers (and so takes a seed).
    pub fn samples(&self) -> bool {
        self.param("temperature").is_some()
    }
}

/// A strategy and all its parameter values: one configuration.
#[derive(Clone)]
pub struct StrategySpec {
    pub def: &'static StrategyDef,
    pub params: Params,
}

impl std::fmt::Debug for StrategySpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.id())
    }
}

pub fn find(name: &str) -> Option<&'static StrategyDef> {
    REGISTRY.iter().find(|d| d.name == name)
}

pub fn names() -> String {
    REGISTRY.iter().map(|d| d.name).collect::<Vec<_>>().join(", ")
}

impl StrategySpec {
    /// Resolves `name` with the `given` values (by parameter name), fills in defaults and checks
    /// every value and the combination.
    pub fn resolve(name: &str, given: &[(String, Value)], place: &Place) -> Result<Self> {
        let Some(def) = find(name) else {
            bail!("{}: unknown strategy `{name}` (known: {})", place.strategy(), names());
        };
        let mut values = BTreeMap::new();
        let mut set = BTreeSet::new();
        for (key, value) in given {
            let Some(p) = def.param(key) else {
                let known: Vec<String> = def.params.iter().map(|p| place.name(p)).collect();
                let what = match place {
                    Place::Cli => key.clone(),
                    Place::Config { file, index } => format!("{file}: strategies[{index}].{key}"),
                };
                if known.is_empty() {
                    bail!("{what}: strategy `{name}` takes no parameters");
                }
                bail!("{what}: not a parameter of strategy `{name}` (its parameters: {})", known.join(", "));
            };
            let v = coerce(p, value).map_err(|e| anyhow::anyhow!("{}: {e}", place.name(p)))?;
            values.insert(p.name.to_string(), v);
            set.insert(p.name.to_string());
        }
        for p in def.params {
            values.entry(p.name.to_string()).or_insert_with(|| default_value(p.default));
        }
        let params = Params(values);
        if let Err((param, reason)) = (def.check)(&params, &set) {
            let p = def.param(param).expect("checks name the strategy's own parameters");
            bail!("{}: {reason}", place.name(p));
        }
        Ok(Self { def, params })
    }

    /// Resolves from command-line flags (`--gamma` → `gamma`) given as text.
    pub fn from_flags(name: &str, flags: &[(&str, String)]) -> Result<Self> {
        let Some(def) = find(name) else { bail!("--strategy: unknown strategy `{name}` (known: {})", names()) };
        let mut given = Vec::new();
        for (flag, text) in flags {
            let Some(p) = def.param_by_flag(flag) else {
                let known: Vec<&str> = def.params.iter().map(|p| p.flag).collect();
                let theirs = if known.is_empty() { "it takes none".to_string() } else { format!("its parameters: {}", known.join(", ")) };
                bail!("{flag} does not apply to --strategy {name} ({theirs})");
            };
            given.push((p.name.to_string(), parse_text(p, text).map_err(|e| anyhow::anyhow!("{flag}: {e}"))?));
        }
        Self::resolve(name, &given, &Place::Cli)
    }

    pub fn name(&self) -> &'static str {
        self.def.name
    }

    /// Every parameter as `name=value`, in name order, plus derived facts: unique per
    /// configuration and readable in tables.
    pub fn label(&self) -> String {
        let mut parts: Vec<(String, String)> = self.params.0.iter().map(|(k, v)| (k.clone(), show(v))).collect();
        parts.extend((self.def.derived)(&self.params).into_iter().map(|(k, v)| (k.to_string(), show(&v))));
        parts.sort();
        parts.into_iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
    }

    pub fn id(&self) -> String {
        self.key().id()
    }

    pub fn lossless(&self) -> bool {
        (self.def.lossless)(&self.params)
    }

    pub fn key(&self) -> ConfigKey {
        let mut params = self.params.0.clone();
        params.extend((self.def.derived)(&self.params).into_iter().map(|(k, v)| (k.to_string(), v)));
        ConfigKey { strategy: self.def.name.to_string(), config: self.label(), params, lossless: self.lossless() }
    }

    pub fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Decoder>> {
        (self.def.build)(&self.params, ctx)
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::Null => "none".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn default_value(d: Default) -> Value {
    match d {
        Default::Int(i) => Value::from(i),
        Default::Float(f) => Value::from(f),
        Default::Str(s) => Value::from(s),
        Default::Bool(b) => Value::from(b),
        Default::None => Value::Null,
    }
}

/// Parses a command-line value for `p`.
pub fn parse_text(p: &ParamDef, text: &str) -> std::result::Result<Value, String> {
    let t = text.trim();
    let none = t.eq_ignore_ascii_case("none");
    let v = match p.kind {
        Kind::Int { .. } | Kind::OptInt { .. } if !none => {
            Value::from(t.parse::<i64>().map_err(|_| format!("expected an integer, got `{text}`"))?)
        }
        Kind::Float { .. } | Kind::OptFloat { .. } if !none => {
            Value::from(t.parse::<f64>().map_err(|_| format!("expected a number, got `{text}`"))?)
        }
        Kind::Bool => Value::from(match t {
            "true" | "yes" | "1" => true,
            "false" | "no" | "0" => false,
            _ => return Err(format!("expected true or false, got `{text}`")),
        }),
        Kind::Int { .. } | Kind::Float { .. } => return Err(format!("expected a value, got `{text}`")),
        _ if none => Value::Null,
        _ => Value::from(t),
    };
    Ok(v)
}

/// Checks a value's type and range; returns it normalised.
pub fn coerce(p: &ParamDef, v: &Value) -> std::result::Result<Value, String> {
    let none_ok = matches!(p.kind, Kind::OptInt { .. } | Kind::OptFloat { .. });
    if none_ok && (v.is_null() || v.as_str().is_some_and(|s| s.eq_ignore_ascii_case("none"))) {
        return Ok(Value::Null);
    }
    match p.kind {
        Kind::Int { min, max } | Kind::OptInt { min, max } => {
            let i = v.as_i64().ok_or_else(|| format!("expected an integer, got {v}"))?;
            if i < min || i > max {
                return Err(format!("must be in {min}..={max}, got {i}"));
            }
            Ok(Value::from(i))
        }
        Kind::Float { min, max } | Kind::OptFloat { min, max } => {
            let f = v.as_f64().ok_or_else(|| format!("expected a number, got {v}"))?;
            if !f.is_finite() || f < min || f > max {
                return Err(format!("must be in [{min}, {max}], got {f}"));
            }
            Ok(Value::from(f))
        }
        Kind::Choice(options) => {
            let s = v.as_str().map(str::to_string).or_else(|| v.as_bool().map(|b| b.to_string()));
            match s {
                Some(s) if options.contains(&s.as_str()) => Ok(Value::from(s)),
                _ => Err(format!("must be one of {}, got {v}", options.join(", "))),
            }
        }
        Kind::Bool => v.as_bool().map(Value::from).ok_or_else(|| format!("expected true or false, got {v}")),
        Kind::Text => match v.as_str() {
            Some(s) if !s.trim().is_empty() => Ok(Value::from(s)),
            _ => Err(format!("expected a non-empty string, got {v}")),
        },
    }
}

// ---- the parameters the strategies share ----

const TEMPERATURE: ParamDef = ParamDef {
    name: "temperature",
    flag: "--temperature",
    kind: Kind::Float { min: 0.0, max: 100.0 },
    default: Default::Float(0.0),
    help: "sampling temperature (0 = arg-max)",
};
const TOP_K: ParamDef = ParamDef {
    name: "top_k",
    flag: "--top-k",
    kind: Kind::OptInt { min: 1, max: 1 << 20 },
    default: Default::None,
    help: "keep the k most likely tokens when sampling",
};
const TOP_P: ParamDef = ParamDef {
    name: "top_p",
    flag: "--top-p",
    kind: Kind::OptFloat { min: 1e-9, max: 1.0 },
    default: Default::None,
    help: "nucleus sampling mass",
};

/// `top_k` / `top_p` shape a sampling distribution; at temperature 0 they would be dropped.
fn sampling_only_when_hot(p: &Params, given: &BTreeSet<String>) -> std::result::Result<(), (&'static str, String)> {
    if p.float("temperature") == 0.0 {
        for name in ["top_k", "top_p"] {
            if given.contains(name) {
                return Err((if name == "top_k" { "top_k" } else { "top_p" }, "applies only when sampling (temperature > 0)".into()));
            }
        }
    }
    Ok(())
}

fn no_check(_: &Params, _: &BTreeSet<String>) -> std::result::Result<(), (&'static str, String)> {
    Ok(())
}

fn nothing_derived(_: &Params) -> Vec<(&'static str, Value)> {
    Vec::new()
}

// ---- greedy ----

struct Greedy;

impl Decoder for Greedy {
    fn generate(
        &mut self,
        models: Models<'_>,
        prompt: &[u32],
        stop: &StopConfig,
        _seed: u64,
        on_token: &mut dyn FnMut(u32),
    ) -> Result<Generation> {
        Ok(autoregressive::greedy(&mut models.target.model, prompt, stop, on_token)?)
    }
}

// ---- sampling ----

struct Sample(Params);

impl Decoder for Sample {
    fn generate(
        &mut self,
        models: Models<'_>,
        prompt: &[u32],
        stop: &StopConfig,
        seed: u64,
        on_token: &mut dyn FnMut(u32),
    ) -> Result<Generation> {
        let mut sampler = Sampler::new(self.0.sampling(seed));
        Ok(autoregressive::sample(&mut models.target.model, prompt, stop, &mut sampler, on_token)?)
    }
}

fn check_sample(p: &Params, g: &BTreeSet<String>) -> std::result::Result<(), (&'static str, String)> {
    if p.float("temperature") <= 0.0 {
        return Err(("temperature", "must be > 0 for sampling (temperature 0 is --strategy greedy)".into()));
    }
    sampling_only_when_hot(p, g)
}

// ---- beam search ----

struct Beam(BeamConfig);

impl Decoder for Beam {
    fn generate(
        &mut self,
        models: Models<'_>,
        prompt: &[u32],
        stop: &StopConfig,
        _seed: u64,
        on_token: &mut dyn FnMut(u32),
    ) -> Result<Generation> {
        Ok(beam::generate(&mut models.target.model, prompt, stop, &self.0, on_token)?)
    }
}

fn build_beam(p: &Params, _: &BuildContext) -> Result<Box<dyn Decoder>> {
    let early_stopping: EarlyStopping = p.text("early_stopping").parse().map_err(anyhow::Error::msg)?;
    let config = BeamConfig { num_beams: p.usize("num_beams"), length_penalty: p.float("length_penalty"), early_stopping };
    config.validate()?;
    Ok(Box::new(Beam(config)))
}

// ---- draft-model speculative decoding ----

struct Speculative(SpeculativeConfig, Params);

impl Decoder for Speculative {
    fn generate(
        &mut self,
        models: Models<'_>,
        prompt: &[u32],
        stop: &StopConfig,
        seed: u64,
        on_token: &mut dyn FnMut(u32),
    ) -> Result<Generation> {
        let Some(draft) = models.draft else { bail!("strategy speculative needs a draft model") };
        let mut sampler = Sampler::new(self.1.sampling(seed));
        Ok(speculative::generate(&mut models.target.model, &mut draft.model, prompt, stop, &self.0, &mut sampler, on_token)?)
    }
}

fn check_accept_vs_temperature(p: &Params, g: &BTreeSet<String>, greedy_rule: &str) -> std::result::Result<(), (&'static str, String)> {
    if p.text("accept") == greedy_rule && p.float("temperature") > 0.0 {
        return Err(("temperature", format!("accept={greedy_rule} needs temperature 0 (it reproduces greedy decoding)")));
    }
    sampling_only_when_hot(p, g)
}

fn check_speculative(p: &Params, g: &BTreeSet<String>) -> std::result::Result<(), (&'static str, String)> {
    if p.opt_int("draft_vocab").is_some() && p.text("accept") == "rejection" {
        return Err(("draft_vocab", "draft_vocab needs accept=greedy (rejection sampling needs the draft's whole distribution)".into()));
    }
    check_accept_vs_temperature(p, g, "greedy")
}

fn build_speculative(p: &Params, _: &BuildContext) -> Result<Box<dyn Decoder>> {
    let schedule = if p.text("schedule") == "heuristic" { GammaSchedule::Heuristic } else { GammaSchedule::Constant };
    let acceptance = if p.text("accept") == "rejection" { SpecAcceptance::Rejection } else { SpecAcceptance::Greedy };
    let draft_vocab = p.opt_int("draft_vocab").map(|n| n as usize);
    let config = SpeculativeConfig { gamma: p.usize("gamma"), schedule, p_min: p.opt_float("p_min"), acceptance, draft_vocab };
    config.validate().map_err(anyhow::Error::msg)?;
    Ok(Box::new(Speculative(config, p.clone())))
}

// ---- Medusa ----

struct Medusa(MedusaConfig, Params);

impl Decoder for Medusa {
    fn generate(
        &mut self,
        models: Models<'_>,
        prompt: &[u32],
        stop: &StopConfig,
        seed: u64,
        on_token: &mut dyn FnMut(u32),
    ) -> Result<Generation> {
        let Some(heads) = models.heads else { bail!("strategy medusa needs Medusa heads") };
        let mut sampler = Sampler::new(self.1.sampling(seed));
        Ok(medusa::generate(&mut models.target.model, heads, prompt, stop, &self.0, &mut sampler, on_token)?)
    }
}

/// Trees are checked against the deepest heads anyone ships (names, files, shapes) before any
/// model loads, and against the actual heads when built.
const MAX_CHECKED_HEADS: usize = 64;

fn check_medusa(p: &Params, g: &BTreeSet<String>) -> std::result::Result<(), (&'static str, String)> {
    if p.text("accept") == "greedy" {
        for name in ["epsilon", "alpha"] {
            if g.contains(name) {
                return Err((if name == "epsilon" { "epsilon" } else { "alpha" }, "applies to accept=typical only".into()));
            }
        }
    }
    TreeTopology::parse(p.text("tree"), MAX_CHECKED_HEADS, DEFAULT_MAX_TOP_K).map_err(|e| ("tree", e))?;
    sampling_only_when_hot(p, g)
}

fn medusa_derived(p: &Params) -> Vec<(&'static str, Value)> {
    match TreeTopology::parse(p.text("tree"), MAX_CHECKED_HEADS, DEFAULT_MAX_TOP_K) {
        Ok(tree) => vec![("tree_nodes", Value::from(tree.len()))],
        Err(_) => Vec::new(),
    }
}

fn build_medusa(p: &Params, ctx: &BuildContext) -> Result<Box<dyn Decoder>> {
    let Some(num_heads) = ctx.num_heads else { bail!("strategy medusa needs Medusa heads") };
    let tree =
        TreeTopology::parse(p.text("tree"), num_heads, DEFAULT_MAX_TOP_K).map_err(|e| anyhow::anyhow!("tree {}: {e}", p.text("tree")))?;
    let acceptance = match p.text("accept") {
        "typical" => AcceptanceRule::Typical { epsilon: p.float("epsilon"), alpha: p.float("alpha") },
        _ => AcceptanceRule::Greedy,
    };
    acceptance.validate().map_err(anyhow::Error::msg)?;
    Ok(Box::new(Medusa(MedusaConfig { tree, acceptance }, p.clone())))
}

fn medusa_lossless(p: &Params) -> bool {
    // Both rules are the arg-max at temperature 0.
    p.float("temperature") == 0.0
}

// ---- draft-free lookup (prompt lookup, n-gram cache, trees of matches) ----

struct Lookup {
    config: LookupConfig,
    /// The n-gram cache and acceptance statistics: kept across every turn of a run.
    state: LookupState,
    params: Params,
}

impl Decoder for Lookup {
    fn generate(
        &mut self,
        models: Models<'_>,
        prompt: &[u32],
        stop: &StopConfig,
        seed: u64,
        on_token: &mut dyn FnMut(u32),
    ) -> Result<Generation> {
        let mut sampler = Sampler::new(self.params.sampling(seed));
        Ok(lookup::generate(&mut models.target.model, prompt, stop, &self.config, &mut self.state, &mut sampler, on_token)?)
    }
}

fn check_lookup(p: &Params, g: &BTreeSet<String>) -> std::result::Result<(), (&'static str, String)> {
    if g.contains("max_tree_nodes") && !p.bool("tree") {
        return Err(("max_tree_nodes", "applies to tree lookup only (tree = true)".into()));
    }
    if p.int("min_ngram") > p.int("max_ngram") {
        return Err(("min_ngram", format!("must be at most max_ngram ({})", p.int("max_ngram"))));
    }
    check_accept_vs_temperature(p, g, "greedy")
}

fn build_lookup(p: &Params, ctx: &BuildContext) -> Result<Box<dyn Decoder>> {
    let cost_aware = p.bool("cost_aware");
    if cost_aware && ctx.cost_curve.is_none() {
        bail!("cost-aware lookup needs the target's forward-cost curve (the runner and `generate` calibrate it first)");
    }
    let config = LookupConfig {
        max_ngram: p.usize("max_ngram"),
        min_ngram: p.usize("min_ngram"),
        num_draft: p.usize("num_draft"),
        tree: p.bool("tree"),
        max_tree_nodes: p.usize("max_tree_nodes"),
        cost_aware,
        acceptance: if p.text("accept") == "sampling" { LookupAcceptance::Sampling } else { LookupAcceptance::Greedy },
        cost_curve: if cost_aware { ctx.cost_curve.clone() } else { None },
        use_cache: p.bool("ngram_cache"),
    };
    config.validate().map_err(anyhow::Error::msg)?;
    let state = LookupState::new(&config);
    Ok(Box::new(Lookup { config, state, params: p.clone() }))
}

// ---- the registry ----

/// Every strategy decodebench knows. Add a strategy here (and its module in `strategies/`).
pub static REGISTRY: &[StrategyDef] = &[
    StrategyDef {
        name: "greedy",
        summary: "the arg-max, one token per forward; the reference for every lossless strategy",
        params: &[],
        needs_draft: false,
        needs_heads: false,
        lossless: |_| true,
        check: no_check,
        derived: nothing_derived,
        build: |_, _| Ok(Box::new(Greedy)),
    },
    StrategyDef {
        name: "sample",
        summary: "sampling from the model's distribution (temperature, top-k, top-p), seeded",
        params: &[ParamDef { default: Default::Float(0.7), ..TEMPERATURE }, TOP_K, TOP_P],
        needs_draft: false,
        needs_heads: false,
        lossless: |_| false,
        check: check_sample,
        derived: nothing_derived,
        build: |p, _| Ok(Box::new(Sample(p.clone()))),
    },
    StrategyDef {
        name: "beam",
        summary: "beam search with Hugging Face semantics",
        params: &[
            ParamDef {
                name: "num_beams",
                flag: "--num-beams",
                kind: Kind::Int { min: 1, max: 64 },
                default: Default::Int(4),
                help: "beams",
            },
            ParamDef {
                name: "length_penalty",
                flag: "--length-penalty",
                kind: Kind::Float { min: -10.0, max: 10.0 },
                default: Default::Float(1.0),
                help: "score = sum log-prob / length^L",
            },
            ParamDef {
                name: "early_stopping",
                flag: "--early-stopping",
                kind: Kind::Choice(&["true", "false", "never"]),
                default: Default::Str("false"),
                help: "HF's early_stopping (false is its heuristic)",
            },
        ],
        needs_draft: false,
        needs_heads: false,
        lossless: |p| p.int("num_beams") == 1,
        check: no_check,
        derived: nothing_derived,
        build: build_beam,
    },
    StrategyDef {
        name: "speculative",
        summary: "a draft model proposes γ tokens, the target verifies them in one forward",
        params: &[
            ParamDef {
                name: "gamma",
                flag: "--gamma",
                kind: Kind::Int { min: 1, max: 64 },
                default: Default::Int(4),
                help: "draft tokens per step",
            },
            ParamDef {
                name: "schedule",
                flag: "--gamma-schedule",
                kind: Kind::Choice(&["constant", "heuristic"]),
                default: Default::Str("constant"),
                help: "how γ changes between steps (heuristic: HF's +2 / −1)",
            },
            ParamDef {
                name: "p_min",
                flag: "--p-min",
                kind: Kind::OptFloat { min: 0.0, max: 1.0 },
                default: Default::None,
                help: "stop drafting below this draft top-1 probability",
            },
            ParamDef {
                name: "draft_vocab",
                flag: "--draft-vocab",
                kind: Kind::OptInt { min: 1, max: 1 << 24 },
                default: Default::None,
                help: "draft among the first N token ids only (the most frequent in BPE order)",
            },
            ParamDef {
                name: "accept",
                flag: "--accept",
                kind: Kind::Choice(&["greedy", "rejection"]),
                default: Default::Str("greedy"),
                help: "greedy (lossless) or rejection sampling",
            },
            TEMPERATURE,
            TOP_K,
            TOP_P,
        ],
        needs_draft: true,
        needs_heads: false,
        lossless: |p| p.text("accept") == "greedy",
        check: check_speculative,
        derived: nothing_derived,
        build: build_speculative,
    },
    StrategyDef {
        name: "medusa",
        summary: "Medusa heads propose a tree of candidates, verified in one tree-attention forward",
        params: &[
            ParamDef {
                name: "tree",
                flag: "--tree",
                kind: Kind::Text,
                default: Default::Str("mc_sim_7b_63"),
                help: "a shipped tree name, chain:D, dense:KxD, or a JSON file of paths",
            },
            ParamDef {
                name: "accept",
                flag: "--accept",
                kind: Kind::Choice(&["greedy", "typical"]),
                default: Default::Str("greedy"),
                help: "greedy (lossless at temperature 0) or typical acceptance",
            },
            ParamDef {
                name: "epsilon",
                flag: "--epsilon",
                kind: Kind::Float { min: 0.0, max: 1.0 },
                default: Default::Float(AcceptanceRule::DEFAULT_EPSILON),
                help: "typical acceptance: hard threshold ε",
            },
            ParamDef {
                name: "alpha",
                flag: "--alpha",
                kind: Kind::Float { min: 0.0, max: 1.0 },
                default: Default::Float(AcceptanceRule::DEFAULT_ALPHA),
                help: "typical acceptance: entropy factor α",
            },
            TEMPERATURE,
            TOP_K,
            TOP_P,
        ],
        needs_draft: false,
        needs_heads: true,
        lossless: medusa_lossless,
        check: check_medusa,
        derived: medusa_derived,
        build: build_medusa,
    },
    StrategyDef {
        name: "lookup",
        summary: "draft-free: copy what followed the longest earlier match of the text's suffix, verify in one forward",
        params: &[
            ParamDef {
                name: "max_ngram",
                flag: "--max-ngram",
                kind: Kind::Int { min: 1, max: 32 },
                default: Default::Int(3),
                help: "longest suffix matched",
            },
            ParamDef {
                name: "min_ngram",
                flag: "--min-ngram",
                kind: Kind::Int { min: 1, max: 32 },
                default: Default::Int(1),
                help: "shortest suffix matched",
            },
            ParamDef {
                name: "num_draft",
                flag: "--num-draft",
                kind: Kind::Int { min: 1, max: 64 },
                default: Default::Int(8),
                help: "most tokens drafted per step",
            },
            ParamDef {
                name: "tree",
                flag: "--lookup-tree",
                kind: Kind::Bool,
                default: Default::Bool(false),
                help: "verify several matches' continuations as one tree",
            },
            ParamDef {
                name: "max_tree_nodes",
                flag: "--max-tree-nodes",
                kind: Kind::Int { min: 1, max: 128 },
                default: Default::Int(32),
                help: "tree node cap",
            },
            ParamDef {
                name: "cost_aware",
                flag: "--cost-aware",
                kind: Kind::Bool,
                default: Default::Bool(false),
                help: "draft only as much as the machine's cost curve says pays",
            },
            ParamDef {
                name: "ngram_cache",
                flag: "--ngram-cache",
                kind: Kind::Bool,
                default: Default::Bool(true),
                help: "also draft from earlier turns' n-grams",
            },
            ParamDef {
                name: "accept",
                flag: "--accept",
                kind: Kind::Choice(&["greedy", "sampling"]),
                default: Default::Str("greedy"),
                help: "greedy (lossless) or the sampling rule for deterministic drafts",
            },
            TEMPERATURE,
            TOP_K,
            TOP_P,
        ],
        needs_draft: false,
        needs_heads: false,
        lossless: |p| p.text("accept") == "greedy",
        check: check_lookup,
        derived: nothing_derived,
        build: build_lookup,
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    fn given(pairs: &[(&str, Value)]) -> Vec<(String, Value)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    fn cfg(index: usize) -> Place {
        Place::Config { file: "x.toml".into(), index }
    }

    #[test]
    fn defaults_fill_in_and_label_names_every_parameter() {
        let s = StrategySpec::resolve("speculative", &given(&[("gamma", Value::from(5))]), &cfg(0)).unwrap();
        assert_eq!(s.label(), "accept=greedy,draft_vocab=none,gamma=5,p_min=none,schedule=constant,temperature=0.0,top_k=none,top_p=none");
        assert!(s.lossless());
        assert_eq!(s.id(), format!("speculative[{}]", s.label()));
        let g = StrategySpec::resolve("greedy", &[], &Place::Cli).unwrap();
        assert_eq!(g.id(), "greedy");
        let m = StrategySpec::resolve("medusa", &given(&[("tree", Value::from("chain:3"))]), &cfg(0)).unwrap();
        assert!(m.label().contains("tree_nodes=3"), "{}", m.label());
    }

    #[test]
    fn errors_name_the_field_where_the_user_wrote_it() {
        let e = StrategySpec::resolve("speculative", &given(&[("gamma", Value::from(0))]), &cfg(3)).unwrap_err().to_string();
        assert!(e.contains("x.toml: strategies[3].gamma") && e.contains("1..=64"), "{e}");
        let e = StrategySpec::from_flags("speculative", &[("--gamma", "0".into())]).unwrap_err().to_string();
        assert!(e.starts_with("--gamma:"), "{e}");
        let e = StrategySpec::resolve("speculative", &given(&[("gama", Value::from(2))]), &cfg(1)).unwrap_err().to_string();
        assert!(e.contains("strategies[1].gama") && e.contains("strategies[1].gamma"), "{e}");
        let e = StrategySpec::resolve("nope", &[], &cfg(2)).unwrap_err().to_string();
        assert!(e.contains("strategies[2].name") && e.contains("medusa"), "{e}");
        let e = StrategySpec::resolve("medusa", &given(&[("tree", Value::from("no_such_tree"))]), &cfg(0)).unwrap_err().to_string();
        assert!(e.contains("strategies[0].tree"), "{e}");
    }

    #[test]
    fn flags_the_strategy_ignores_are_refused() {
        let e = StrategySpec::from_flags("beam", &[("--temperature", "0.7".into())]).unwrap_err().to_string();
        assert!(e.contains("--temperature does not apply to --strategy beam"), "{e}");
        let e = StrategySpec::from_flags("medusa", &[("--epsilon", "0.1".into())]).unwrap_err().to_string();
        assert!(e.contains("--epsilon") && e.contains("typical"), "{e}");
        let e = StrategySpec::from_flags("speculative", &[("--top-p", "0.9".into())]).unwrap_err().to_string();
        assert!(e.contains("--top-p"), "{e}");
        let e = StrategySpec::from_flags("speculative", &[("--temperature", "0.7".into())]).unwrap_err().to_string();
        assert!(e.contains("--temperature") && e.contains("accept=greedy"), "{e}");
        let ok = StrategySpec::from_flags("speculative", &[("--temperature", "0.7".into()), ("--accept", "rejection".into())]).unwrap();
        assert!(!ok.lossless());
        let e = StrategySpec::from_flags("greedy", &[("--gamma", "2".into())]).unwrap_err().to_string();
        assert!(e.contains("takes none"), "{e}");
        let rejection = [("--temperature", "0.7".into()), ("--accept", "rejection".into()), ("--draft-vocab", "32768".into())];
        let e = StrategySpec::from_flags("speculative", &rejection).unwrap_err().to_string();
        assert!(e.contains("--draft-vocab") && e.contains("accept=greedy"), "{e}");
        let limited = StrategySpec::from_flags("speculative", &[("--draft-vocab", "32768".into())]).unwrap();
        assert!(limited.lossless() && limited.label().contains("draft_vocab=32768"), "{}", limited.label());
    }

    #[test]
    fn lossless_follows_the_parameters() {
        let one = StrategySpec::from_flags("beam", &[("--num-beams", "1".into())]).unwrap();
        let four = StrategySpec::from_flags("beam", &[]).unwrap();
        assert!(one.lossless() && !four.lossless());
        let typical_cold = StrategySpec::from_flags("medusa", &[("--accept", "typical".into())]).unwrap();
        assert!(typical_cold.lossless());
        assert!(!StrategySpec::from_flags("sample", &[]).unwrap().lossless());
    }
}
