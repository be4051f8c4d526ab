//! Errors and warnings of lowering. Each carries the span(s) it is about and
//! structured data; the message is made from that data, never preformatted.

use miette::Diagnostic;
use thiserror::Error;

use crate::source::Span;

#[derive(Debug, Clone, Error, Diagnostic, PartialEq)]
pub enum LowerError {
    #[error("unknown {what} `{found}`")]
    #[diagnostic(code(multigate::lower::unknown_word))]
    UnknownWord {
        what: &'static str,
        found: String,
        #[label("expected one of: {}", expected.join(", "))]
        span: Span,
        expected: &'static [&'static str],
        #[help]
        help: Option<String>,
    },

    #[error("unknown {what} `{name}`")]
    #[diagnostic(code(multigate::lower::unknown_name))]
    UnknownName {
        what: &'static str,
        name: String,
        #[label("no {what} has this name")]
        span: Span,
        #[help]
        help: Option<String>,
    },

    #[error("duplicate {what} name `{name}`")]
    #[diagnostic(
        code(multigate::lower::duplicate),
        help("names of features and crosses, of layers, and of tasks must be unique")
    )]
    Duplicate {
        what: &'static str,
        name: String,
        #[label("first defined here")]
        first: Span,
        #[label("defined again here")]
        second: Span,
    },

    #[error("{what} is {found}, but must be {expected}")]
    #[diagnostic(code(multigate::lower::out_of_range))]
    OutOfRange {
        what: &'static str,
        found: String,
        expected: std::borrow::Cow<'static, str>,
        #[label("out of range")]
        span: Span,
    },

    #[error("{what} is required here")]
    #[diagnostic(code(multigate::lower::missing))]
    Missing {
        what: &'static str,
        #[label("in this item")]
        span: Span,
        #[help]
        help: Option<String>,
    },

    #[error("`{key}` does not apply to {context}")]
    #[diagnostic(code(multigate::lower::not_allowed))]
    NotAllowed {
        key: &'static str,
        context: &'static str,
        #[label("remove this")]
        span: Span,
        #[help]
        help: Option<String>,
    },

    #[error("cross `{name}` multiplies embeddings of different widths ({a}: {a_dim}, {b}: {b_dim})")]
    #[diagnostic(code(multigate::lower::cross_width), help("give both features the same embedding_dim"))]
    CrossWidth {
        name: String,
        a: String,
        a_dim: usize,
        b: String,
        b_dim: usize,
        #[label("widths {a_dim} and {b_dim}")]
        span: Span,
    },

    #[error("cross `{name}` needs categorical features, but `{feature}` is dense")]
    #[diagnostic(code(multigate::lower::cross_dense), help("only categorical embeddings can be crossed"))]
    CrossDense {
        name: String,
        feature: String,
        #[label("a dense feature")]
        span: Span,
    },

    #[error("shared_bottom layer `{layer}` has no experts and no gate")]
    #[diagnostic(
        code(multigate::lower::gate_on_shared_bottom),
        help("remove `experts`, or make the layer `moe` (one gate) or `mmoe` (a gate per task)")
    )]
    GateOnSharedBottom {
        layer: String,
        #[label("not allowed on shared_bottom")]
        span: Span,
    },

    #[error("cgc layer `{layer}` reads a per-task stream without a shared slot, so its shared experts have no input")]
    #[diagnostic(
        code(multigate::lower::no_shared_slot),
        help("put cgc layers first, or right after another cgc layer (PLE), whose shared gate feeds them")
    )]
    NoSharedSlot {
        layer: String,
        #[label("after a layer that writes only per-task slots")]
        span: Span,
    },

    #[error("task `{task}` multiplies `{factor}`, which {problem}")]
    #[diagnostic(
        code(multigate::lower::bad_factor),
        help("a product (ESMM's ctcvr = ctr x cvr) multiplies two other binary tasks that have towers")
    )]
    BadFactor {
        task: String,
        factor: String,
        problem: &'static str,
        #[label("this factor")]
        span: Span,
    },

    #[error("task `{task}` transfers from `{from}`, which {problem}")]
    #[diagnostic(
        code(multigate::lower::bad_transfer),
        help("AITM: a task attends to the tower of an earlier binary task of the funnel, declared before it (transfer_from = \"ctr\" on the conversion task)")
    )]
    BadTransfer {
        task: String,
        from: String,
        problem: &'static str,
        #[label("this task")]
        span: Span,
    },

    #[error("label column `{column}` of task `{task}` is also read by feature `{feature}` (label leakage)")]
    #[diagnostic(code(multigate::lower::label_leak), help("remove the feature, or point it at another column"))]
    LabelLeak {
        task: String,
        feature: String,
        column: String,
        #[label("the label")]
        label: Span,
        #[label("read as an input here")]
        input: Span,
    },

    #[error("the synthetic `{generator}` generator cannot serve this spec: {reason}")]
    #[diagnostic(code(multigate::lower::synthetic))]
    Synthetic {
        generator: &'static str,
        reason: String,
        #[label("generator chosen here")]
        span: Span,
        #[help]
        help: Option<String>,
    },
}

#[derive(Debug, Clone, Error, Diagnostic, PartialEq)]
pub enum LowerWarning {
    #[error("layer `{layer}` feeds no tower")]
    #[diagnostic(
        code(multigate::lower::unused_layer),
        severity(Warning),
        help("every task reads an earlier layer (`input`); this layer is computed and never used")
    )]
    UnusedLayer {
        layer: String,
        #[label("unused")]
        span: Span,
    },
    #[error("layer `{layer}` is gated but has only one expert")]
    #[diagnostic(
        code(multigate::lower::one_expert),
        severity(Warning),
        help("with one expert every gate outputs 1.0; this is a shared-bottom with extra parameters")
    )]
    OneExpert {
        layer: String,
        #[label("one expert")]
        span: Span,
    },
    #[error("feature `{feature}` embeds {rows} rows into {dim} dimensions")]
    #[diagnostic(
        code(multigate::lower::wide_embedding),
        severity(Warning),
        help("an embedding wider than its row count cannot use the extra width")
    )]
    WideEmbedding {
        feature: String,
        rows: usize,
        dim: usize,
        #[label("wider than the table has rows")]
        span: Span,
    },
}

impl LowerError {
    /// The primary span, for one-line messages.
    pub fn span(&self) -> Span {
        match self {
            LowerError::UnknownWord { span, .. }
            | LowerError::UnknownName { span, .. }
            | LowerError::OutOfRange { span, .. }
            | LowerError::Missing { span, .. }
            | LowerError::NotAllowed { span, .. }
            | LowerError::CrossWidth { span, .. }
            | LowerError::CrossDense { span, .. }
            | LowerError::GateOnSharedBottom { span, .. }
            | LowerError::NoSharedSlot { span, .. }
            | LowerError::BadFactor { span, .. }
            | LowerError::BadTransfer { span, .. }
            | LowerError::Synthetic { span, .. } => span.clone(),
            LowerError::Duplicate { second, .. } => second.clone(),
            LowerError::LabelLeak { input, .. } => input.clone(),
        }
    }
}
