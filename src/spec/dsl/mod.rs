//! DSL front end: `.mg` text -> [`Spec`], through the pest grammar in
//! `grammar/multigate.pest`. It builds the same `Spec` as the TOML front end, spans
//! included, so one lowering serves both.
//!
//! Every `unwrap`/`expect` on a pair below names the grammar rule that guarantees it.
//! Key errors (unknown or repeated keys, values of the wrong type) are collected, not
//! stopped at; a syntax error stops the parse (pest reports the first).

mod build;

use miette::SourceSpan;
use pest::Parser;
use pest_derive::Parser;

use super::*;
use crate::source::SourceFile;
use build::Builder;

#[derive(Parser)]
#[grammar = "../grammar/multigate.pest"]
struct DslParser;

/// Deepest bracket nesting accepted before parsing (pest recurses per level).
const MAX_DEPTH: usize = 64;

/// Parses a `.mg` spec.
pub fn parse_dsl(src: &SourceFile) -> Result<Spec, Vec<SpecError>> {
    super::check_size(src)?;
    check_depth(&src.text)?;
    let mut pairs = DslParser::parse(Rule::file, &src.text).map_err(|e| vec![syntax_error(e, &src.text)])?;
    // Grammar: `file = { SOI ~ model ~ EOI }`, so a successful parse has one file with a model.
    let file = pairs.next().expect("file rule");
    let model = file.into_inner().next().expect("file contains model");
    let mut b = Builder { errors: Vec::new() };
    let spec = b.model(model);
    if b.errors.is_empty() {
        Ok(spec)
    } else {
        b.errors.sort_by_key(|e| e.span().map_or(0, |s| s.start));
        Err(b.errors)
    }
}

fn check_depth(text: &str) -> Result<(), Vec<SpecError>> {
    let mut depth = 0usize;
    let mut too_deep = None;
    scan_code(text, Syntax::Dsl, |i, c| {
        match c {
            '[' | '(' | '{' => depth += 1,
            ']' | ')' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        if depth > MAX_DEPTH {
            too_deep = Some(i);
        }
        too_deep.is_none()
    });
    match too_deep {
        Some(i) => Err(vec![SpecError::TooDeep { depth, span: (i, 1).into() }]),
        None => Ok(()),
    }
}

/// Readable names for rules in "expected ..." messages.
fn rule_name(r: &Rule) -> &'static str {
    match r {
        Rule::EOI => "end of file",
        Rule::file | Rule::model => "`model NAME { ... }`",
        Rule::data => "`data`",
        Rule::synthetic => "`synthetic`",
        Rule::feature => "`feature`",
        Rule::also => "`, NAME` (more features alike)",
        Rule::cross => "`cross`",
        Rule::layer => "`layer`",
        Rule::task => "`task`",
        Rule::train => "`train`",
        Rule::embed => "`embed N`",
        Rule::column => "`column \"NAME\"`",
        Rule::experts => "`experts N x [units]`",
        Rule::product => "`product(TASK, TASK)`",
        Rule::loss_balance => "`balance METHOD(..)`",
        Rule::gate => "`gate(temperature = .., top_k = .., noise = .., balance = ..)`",
        Rule::task_arg => "`label = COLUMN` or `key = value`",
        Rule::task_experts => "`task_experts N` or `task_experts(task = N, ..)`",
        Rule::units => "`units [..]`",
        Rule::activation | Rule::bare_activation => "an activation",
        Rule::label => "`label = COLUMN`",
        Rule::tower => "`tower [..]`",
        Rule::weight => "`weight X`",
        Rule::dropout => "`dropout X`",
        Rule::cross_layers => "`cross N` (DCN-v2 cross layers below each expert)",
        Rule::input => "`input LAYER`",
        Rule::batch => "`batch N`",
        Rule::epochs => "`epochs N`",
        Rule::seed => "`seed N`",
        Rule::decay => "`decay(..)`",
        Rule::select | Rule::dotted => "`select TASK.METRIC`",
        Rule::patience => "`patience N`",
        Rule::optimizer => "an optimizer such as `adam(lr = 1e-3)`",
        Rule::arguments => "`(key = value, ..)`",
        Rule::argument => "`key = value`",
        Rule::list | Rule::integer_list => "a list `[..]`",
        Rule::string | Rule::text => "a string",
        Rule::number => "a number",
        Rule::integer => "a whole number",
        Rule::boolean => "true or false",
        Rule::name => "a name",
        Rule::word => "a word",
        Rule::keyword => "a keyword",
        Rule::declaration => "a declaration (`feature`, `cross`, `layer`, `task`, `data`, `synthetic`, `train`)",
        Rule::feature_option => "`embed N` or `column \"NAME\"`",
        Rule::layer_option => "`experts`, `task_experts`, `units`, `activation` or `dropout`",
        Rule::task_option => "`tower`, `input`, `weight`, `activation` or `dropout`",
        Rule::train_option => "`batch`, `epochs`, `seed`, `decay(..)`, `select`, `patience` or an optimizer",
        Rule::value => "a value",
        Rule::name_char => "a letter, digit, `_` or `-`",
        Rule::WHITESPACE | Rule::COMMENT => "whitespace",
    }
}

/// The words that start a declaration inside `model NAME { ... }`.
const DECLARATIONS: &[&str] = &["data", "synthetic", "feature", "cross", "layer", "task", "train"];

fn syntax_error(e: pest::error::Error<Rule>, text: &str) -> SpecError {
    let span: SourceSpan = match e.location {
        pest::error::InputLocation::Pos(p) => (p, 0).into(),
        pest::error::InputLocation::Span((a, b)) => (a, b - a).into(),
    };
    // A misspelt declaration keyword gets its own message, not the list of every token
    // the parser could take there.
    if let pest::error::ErrorVariant::ParsingError { positives, .. } = &e.variant {
        let at = span.offset();
        let word: String =
            text.get(at..).unwrap_or("").chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        let wants_declaration = positives.iter().any(|r| matches!(r, Rule::declaration))
            || DECLARATIONS.iter().all(|d| positives.iter().any(|r| rule_name(r).contains(&format!("`{d}`"))));
        if !word.is_empty() && wants_declaration && !DECLARATIONS.contains(&word.as_str()) {
            let hint = crate::diag::did_you_mean(&word, DECLARATIONS.iter().copied())
                .map_or_else(String::new, |h| format!("{h} "));
            return SpecError::Syntax {
                message: format!("unknown declaration `{word}`"),
                span: Some((at, word.len()).into()),
                help: format!("{hint}a declaration starts with one of: {}", DECLARATIONS.join(", ")),
            };
        }
    }
    let message = match &e.variant {
        pest::error::ErrorVariant::ParsingError { positives, .. } if !positives.is_empty() => {
            let mut names: Vec<&str> = positives.iter().map(rule_name).collect();
            names.dedup();
            format!("expected {}", names.join(" or "))
        }
        pest::error::ErrorVariant::ParsingError { negatives, .. } if !negatives.is_empty() => {
            format!("unexpected {}", negatives.iter().map(rule_name).collect::<Vec<_>>().join(" or "))
        }
        pest::error::ErrorVariant::CustomError { message } => message.clone(),
        _ => "syntax error".to_string(),
    };
    SpecError::Syntax {
        message,
        span: Some(span),
        help: "see grammar/multigate.pest and the README's DSL section".into(),
    }
}
