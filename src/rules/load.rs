//! Loading rules from YAML files for standalone mode: every `*.yaml`/`*.yml` file of a
//! folder (the same files `kubectl apply -f rules/` takes), every `---` document in
//! each, read into the typed custom resources of [`crate::rules::crd`].
//!
//! A document that the API server would refuse is refused here too, with a one-line
//! reason naming the file, document and line: wrong `apiVersion`, unknown `kind`,
//! missing or mistyped fields (with their path), fields the schema does not have, a bad
//! name, an `sli` with both or neither indicator, and a second rule with the same kind,
//! namespace and name. One bad document never hides the others, and only a folder that
//! cannot be listed is an error. Objects of other API groups and kinds (the `Namespace`
//! that lets `kubectl apply -f rules/` work on a fresh cluster) are skipped, with a debug
//! log: `kubectl apply` takes them, and they are not rules. What a rule *means* (thresholds, durations, PromQL) is
//! checked later, when the rule is compiled, exactly as for rules read from a cluster.
//!
//! Loading is linear in the size of a file and bounded before any YAML parser runs: a
//! file over [`MAX_FILE_BYTES`] is refused whole, and a document whose flow collections
//! (`[`, `{`) nest deeper than [`MAX_FLOW_DEPTH`] is refused without being parsed.
//! libyaml scans every open flow level at each token (quadratic: a list nested 100 000
//! deep never finished loading) and serde_yaml recurses per level. Rules are read
//! before the server listens, so a rules file must never be able to exhaust time or
//! memory there.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use kube::api::ObjectMeta;
use serde::{Serialize, Serializer};
use serde_yaml::Value;

use crate::rules::crd::{API_VERSION, AnomalyAction, GROUP, PredictiveScale, SLOViolation};

/// Namespace of a rule whose `metadata.namespace` is not set, as with `kubectl apply`
/// in the default context.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The largest rules file read, in bytes (4 MiB: some 10 000 rules). A larger file is
/// reported and skipped whole; the other files load.
pub const MAX_FILE_BYTES: u64 = 4 << 20;

/// Refused documents listed per file, each with its reason; the rest are counted in one
/// more entry. A 4 MiB file of 690 000 one-line non-rules otherwise held 700 MB of
/// reasons (and logged each) before the server listened.
pub const MAX_REFUSALS_LISTED: usize = 100;

/// The deepest nesting of YAML flow collections (`[...]`, `{...}`) in one document.
/// Counted over the document's text before it is parsed, brackets inside strings and
/// comments included, so the count can only overstate the real nesting; real rules
/// nest a few levels.
pub const MAX_FLOW_DEPTH: usize = 64;

/// One rule of any of the three kinds.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    /// An `AnomalyAction`.
    AnomalyAction(AnomalyAction),
    /// A `PredictiveScale`.
    PredictiveScale(PredictiveScale),
    /// An `SLOViolation`.
    SloViolation(SLOViolation),
}

impl Rule {
    /// Which kind of rule this is.
    pub fn kind(&self) -> RuleKind {
        match self {
            Rule::AnomalyAction(_) => RuleKind::AnomalyAction,
            Rule::PredictiveScale(_) => RuleKind::PredictiveScale,
            Rule::SloViolation(_) => RuleKind::SloViolation,
        }
    }

    /// The rule's object metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Rule::AnomalyAction(rule) => &rule.metadata,
            Rule::PredictiveScale(rule) => &rule.metadata,
            Rule::SloViolation(rule) => &rule.metadata,
        }
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Rule::AnomalyAction(rule) => &mut rule.metadata,
            Rule::PredictiveScale(rule) => &mut rule.metadata,
            Rule::SloViolation(rule) => &mut rule.metadata,
        }
    }

    /// Identity of the rule: kind, namespace (`default` when unset) and name (empty
    /// when unset, which the loader never lets through).
    pub fn key(&self) -> RuleKey {
        let metadata = self.metadata();
        RuleKey {
            kind: self.kind(),
            namespace: metadata
                .namespace
                .clone()
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
            name: metadata.name.clone().unwrap_or_default(),
        }
    }
}

impl From<AnomalyAction> for Rule {
    fn from(rule: AnomalyAction) -> Self {
        Rule::AnomalyAction(rule)
    }
}

impl From<PredictiveScale> for Rule {
    fn from(rule: PredictiveScale) -> Self {
        Rule::PredictiveScale(rule)
    }
}

impl From<SLOViolation> for Rule {
    fn from(rule: SLOViolation) -> Self {
        Rule::SloViolation(rule)
    }
}

/// Serializes as the custom resource itself (with its `apiVersion` and `kind`), so the
/// output is a document `kubectl apply` and [`parse_documents`] both accept.
impl Serialize for Rule {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Rule::AnomalyAction(rule) => rule.serialize(serializer),
            Rule::PredictiveScale(rule) => rule.serialize(serializer),
            Rule::SloViolation(rule) => rule.serialize(serializer),
        }
    }
}

/// The three kinds of rule.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
pub enum RuleKind {
    /// `AnomalyAction`
    AnomalyAction,
    /// `PredictiveScale`
    PredictiveScale,
    /// `SLOViolation`
    #[serde(rename = "SLOViolation")]
    SloViolation,
}

impl RuleKind {
    /// Every kind, in the order the CRDs are listed.
    pub const ALL: [RuleKind; 3] = [
        RuleKind::AnomalyAction,
        RuleKind::PredictiveScale,
        RuleKind::SloViolation,
    ];

    /// The `kind` field of this kind's objects.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::AnomalyAction => "AnomalyAction",
            RuleKind::PredictiveScale => "PredictiveScale",
            RuleKind::SloViolation => "SLOViolation",
        }
    }

    /// The kind named by an object's `kind` field, matched exactly as the API server does.
    pub fn from_kind(kind: &str) -> Option<RuleKind> {
        RuleKind::ALL
            .into_iter()
            .find(|known| known.as_str() == kind)
    }
}

impl fmt::Display for RuleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identity of a rule: no two rules may share one. Orders by kind, then namespace, then
/// name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
pub struct RuleKey {
    /// The rule's kind.
    pub kind: RuleKind,
    /// The rule's namespace (`default` when the document sets none).
    pub namespace: String,
    /// The rule's `metadata.name`.
    pub name: String,
}

/// `AnomalyAction default/backend-memory-anomaly`
impl fmt::Display for RuleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// A document that was not loaded, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidDoc {
    /// The file the document came from (or the origin given to [`parse_documents`]).
    pub file: PathBuf,
    /// 1-based position of the document in the file, counting empty documents too so it
    /// matches counting `---` separators. `None` when the file could not be read at all.
    pub document: Option<usize>,
    /// 1-based line of the file where the document starts. `None` like `document`.
    pub line: Option<usize>,
    /// The document's `kind`, when it could be read (even if it is not a Prophet kind).
    pub kind: Option<String>,
    /// The document's `metadata.namespace`, when it could be read.
    pub namespace: Option<String>,
    /// The document's `metadata.name`, when it could be read.
    pub name: Option<String>,
    /// Why the document was not loaded, on one line.
    pub reason: String,
}

/// `rules/x.yaml document 2 (line 17): AnomalyAction default/foo: <reason>`
impl fmt::Display for InvalidDoc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(document) = self.document {
            write!(f, " document {document}")?;
        }
        if let Some(line) = self.line {
            write!(f, " (line {line})")?;
        }
        f.write_str(": ")?;
        let namespace = self.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
        match (&self.kind, &self.name) {
            (Some(kind), Some(name)) => write!(f, "{kind} {namespace}/{name}: ")?,
            (Some(kind), None) => write!(f, "{kind}: ")?,
            (None, Some(name)) => write!(f, "{namespace}/{name}: ")?,
            (None, None) => {}
        }
        f.write_str(&self.reason)
    }
}

/// The outcome of loading a folder: the rules that loaded and the documents that did
/// not. Both are in file-name order, then document order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    /// Every valid rule.
    pub rules: Vec<Rule>,
    /// Every document that was refused.
    pub invalid: Vec<InvalidDoc>,
}

/// Why a folder of rules could not be loaded at all.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The folder cannot be listed (missing, not a folder, no permission).
    #[error("cannot list rules folder {}: {source}", dir.display())]
    ReadDir {
        /// The folder.
        dir: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
}

/// Loads every `*.yaml` and `*.yml` file directly in `dir` (not in subfolders), in
/// file-name order. Files that cannot be read and documents that are not valid rules
/// are reported in [`LoadReport::invalid`]; only a folder that cannot be listed is an
/// error. A rule whose kind, namespace and name were already loaded (from this file or
/// an earlier one) is refused as a duplicate.
pub fn load_dir(dir: &Path) -> Result<LoadReport, LoadError> {
    let read_dir_error = |source| LoadError::ReadDir {
        dir: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_dir_error)? {
        let path = entry.map_err(read_dir_error)?.path();
        let is_yaml = path
            .extension()
            .is_some_and(|extension| extension == "yaml" || extension == "yml");
        // `is_file` follows symlinks, so a linked rules file is loaded like any other.
        if is_yaml && path.is_file() {
            files.push(path);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));

    let mut collector = RuleCollector::default();
    for file in files {
        match read_bounded(&file) {
            Ok(text) => collector.add_text(&text, &file),
            Err(reason) => collector.invalid.push(InvalidDoc {
                file,
                document: None,
                line: None,
                kind: None,
                namespace: None,
                name: None,
                reason,
            }),
        }
    }
    Ok(LoadReport {
        rules: collector.rules,
        invalid: collector.invalid,
    })
}

/// Reads a rules file as text, refusing one over [`MAX_FILE_BYTES`] before reading it
/// (and one that grew past the limit while being read).
fn read_bounded(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let too_large = |bytes: u64| {
        format!(
            "file is {bytes} bytes, over the limit of {MAX_FILE_BYTES} bytes (4 MiB) for one rules file: split it into several files"
        )
    };
    let file = fs::File::open(path).map_err(|error| format!("cannot read file: {error}"))?;
    let declared = file
        .metadata()
        .map_err(|error| format!("cannot read file: {error}"))?
        .len();
    if declared > MAX_FILE_BYTES {
        return Err(too_large(declared));
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| format!("cannot read file: {error}"))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    String::from_utf8(bytes)
        .map_err(|error| format!("cannot read file: stream did not contain valid UTF-8 ({error})"))
}

/// Reads every document of one YAML text, as [`load_dir`] does for each file; `origin`
/// names the text in [`InvalidDoc::file`]. Duplicates are detected within the text only.
pub fn parse_documents(text: &str, origin: &Path) -> (Vec<Rule>, Vec<InvalidDoc>) {
    let mut collector = RuleCollector::default();
    collector.add_text(text, origin);
    (collector.rules, collector.invalid)
}

/// Accumulates rules across files so duplicates are caught wherever they are.
#[derive(Default)]
struct RuleCollector {
    rules: Vec<Rule>,
    invalid: Vec<InvalidDoc>,
    /// Where each loaded rule came from, to name the first copy of a duplicate.
    loaded_from: HashMap<RuleKey, (PathBuf, usize)>,
}

impl RuleCollector {
    fn add_text(&mut self, text: &str, file: &Path) {
        let mut refused = 0usize;
        for document in split_documents(text) {
            let rejection = match read_document(&document.yaml, document.first_line) {
                DocumentOutcome::Empty => continue,
                DocumentOutcome::NotARule { api_version, kind } => {
                    tracing::debug!(
                        file = %file.display(),
                        document = document.index,
                        %api_version,
                        %kind,
                        "skipping a Kubernetes object that is not a Prophet rule"
                    );
                    continue;
                }
                DocumentOutcome::Invalid(rejection) => rejection,
                DocumentOutcome::Rule(rule) => {
                    let key = rule.key();
                    match self.loaded_from.get(&key) {
                        None => {
                            self.loaded_from
                                .insert(key, (file.to_owned(), document.index));
                            self.rules.push(*rule);
                            continue;
                        }
                        Some((first_file, first_index)) => Rejection {
                            kind: Some(key.kind.to_string()),
                            namespace: Some(key.namespace.clone()),
                            name: Some(key.name.clone()),
                            reason: format!(
                                "duplicate {key}: already loaded from {} document {first_index}",
                                first_file.display()
                            ),
                        },
                    }
                }
            };
            refused += 1;
            if refused > MAX_REFUSALS_LISTED {
                continue;
            }
            self.invalid.push(InvalidDoc {
                file: file.to_owned(),
                document: Some(document.index),
                line: Some(document.first_line),
                kind: rejection.kind,
                namespace: rejection.namespace,
                name: rejection.name,
                // Reasons come from several parsers; keep the one-line promise.
                reason: rejection.reason.replace(['\n', '\r'], " "),
            });
        }
        if refused > MAX_REFUSALS_LISTED {
            self.invalid.push(InvalidDoc {
                file: file.to_owned(),
                document: None,
                line: None,
                kind: None,
                namespace: None,
                name: None,
                reason: format!(
                    "{} more documents were not loaded: only the first {MAX_REFUSALS_LISTED} refused documents of a file are listed",
                    refused - MAX_REFUSALS_LISTED
                ),
            });
        }
    }
}

/// One YAML document cut out of a multi-document text.
struct SourceDocument {
    /// 1-based position in the text.
    index: usize,
    /// 1-based line of the text where the document starts.
    first_line: usize,
    /// The document's own text. Parser errors count lines from its start; they are
    /// shifted by `first_line` to the file's lines (not by padding the text with blank
    /// lines: that made loading quadratic in the number of documents).
    yaml: String,
}

/// Cuts a text into its YAML documents.
///
/// Done by hand rather than with serde_yaml's multi-document deserializer because each
/// document is read twice (once untyped to find its kind, once typed), and only the
/// typed read from text reports the path of a bad field. Splitting on lines is exact:
/// YAML forbids a line starting with `---` or `...` (followed by a space or the line's
/// end) anywhere except as a document marker, even inside block scalars.
fn split_documents(text: &str) -> Vec<SourceDocument> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut documents = Vec::new();
    let mut current = String::new();
    let mut first_line = 1;
    // A document opened by `---` counts even when empty, like `---\n---`; text before
    // the first marker or after `...` only counts if it has content.
    let mut explicit = false;

    let mut finish = |current: &mut String, first_line: usize, explicit: bool| {
        let body = std::mem::take(current);
        if explicit || has_content(&body) {
            documents.push(SourceDocument {
                index: documents.len() + 1,
                first_line,
                yaml: body,
            });
        }
    };

    for (offset, line) in text.split_inclusive('\n').enumerate() {
        let line_number = offset + 1;
        let bare = line.trim_end_matches(['\n', '\r']);
        if let Some(rest) = marker_rest(bare, "---") {
            finish(&mut current, first_line, explicit);
            first_line = line_number;
            explicit = true;
            // `--- {a: 1}` starts the document on the marker line; spaces in place of
            // the marker keep the columns in error messages right.
            current.push_str("   ");
            current.push_str(rest);
            current.push('\n');
        } else if marker_rest(bare, "...").is_some() {
            finish(&mut current, first_line, explicit);
            first_line = line_number + 1;
            explicit = false;
        } else {
            current.push_str(line);
        }
    }
    finish(&mut current, first_line, explicit);
    documents
}

/// What follows a document marker at the start of a line, if the line is one.
fn marker_rest<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(marker)?;
    (rest.is_empty() || rest.starts_with([' ', '\t'])).then_some(rest)
}

/// Whether a piece of YAML holds anything besides blank lines, comments and directives.
fn has_content(yaml: &str) -> bool {
    yaml.lines().any(|line| {
        let trimmed = line.trim();
        !(trimmed.is_empty() || trimmed.starts_with('#') || line.starts_with('%'))
    })
}

enum DocumentOutcome {
    /// Nothing but comments, or an explicit empty document.
    Empty,
    /// A Kubernetes object of another group and kind, such as the `Namespace` the
    /// rules live in: `kubectl apply` takes it, and it is no rule to load or report.
    NotARule {
        api_version: String,
        kind: String,
    },
    /// Boxed: a rule is far larger than the other outcomes.
    Rule(Box<Rule>),
    Invalid(Rejection),
}

/// Why one document was refused, with what could be read of its identity.
struct Rejection {
    kind: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    reason: String,
}

/// Reads one document whose text starts at line `first_line` of its file.
fn read_document(yaml: &str, first_line: usize) -> DocumentOutcome {
    let anonymous = |reason: String| {
        DocumentOutcome::Invalid(Rejection {
            kind: None,
            namespace: None,
            name: None,
            reason,
        })
    };
    // Comments and blank lines only: nothing for a parser to do.
    if !has_content(yaml) {
        return DocumentOutcome::Empty;
    }
    let depth = flow_depth(yaml);
    if depth > MAX_FLOW_DEPTH {
        return anonymous(format!(
            "not read: its YAML flow collections ([ and {{) nest {depth} deep, over the limit of {MAX_FLOW_DEPTH}"
        ));
    }
    let error_text = |error: serde_yaml::Error| file_lines(&error, first_line);
    let document: Value = match serde_yaml::from_str(yaml) {
        Ok(document) => document,
        Err(error) => return anonymous(format!("not valid YAML: {}", error_text(error))),
    };
    if document.is_null() {
        return DocumentOutcome::Empty;
    }
    if !document.is_mapping() {
        return anonymous(format!(
            "expected a Kubernetes object (a mapping with apiVersion, kind, metadata and spec), found {}",
            describe(&document)
        ));
    }

    let text_at = |path: &[&str]| {
        path.iter()
            .try_fold(&document, |value, key| value.get(key))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let kind_text = text_at(&["kind"]);
    let namespace = text_at(&["metadata", "namespace"]);
    let name = text_at(&["metadata", "name"]);
    let reject = |reason: String| {
        DocumentOutcome::Invalid(Rejection {
            kind: kind_text.clone(),
            namespace: namespace.clone(),
            name: name.clone(),
            reason,
        })
    };

    if let (Some(api_version), Some(kind)) = (text_at(&["apiVersion"]), &kind_text)
        && is_other_object(&api_version, kind)
    {
        return DocumentOutcome::NotARule {
            api_version,
            kind: kind.clone(),
        };
    }
    match text_at(&["apiVersion"]) {
        None => return reject(format!("missing apiVersion: expected {API_VERSION}")),
        Some(api_version) if api_version != API_VERSION => {
            return reject(wrong_api_version(&api_version));
        }
        Some(_) => {}
    }
    let Some(kind) = kind_text.as_deref().and_then(RuleKind::from_kind) else {
        return reject(unknown_kind(kind_text.as_deref()));
    };
    match &name {
        None => return reject("metadata.name is required".to_owned()),
        Some(name) if !is_dns_subdomain(name) => {
            return reject(format!(
                "metadata.name {name:?} is not a valid Kubernetes name: expected at most 253 lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
            ));
        }
        Some(_) => {}
    }
    if let Some(namespace) = &namespace
        && !is_dns_label(namespace)
    {
        return reject(format!(
            "metadata.namespace {namespace:?} is not a valid namespace: expected at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit"
        ));
    }

    // Read from the text, not from `document`: only then does serde_yaml report the
    // path and line of a bad field ("spec.remediation: missing field `type` at line 9").
    let typed = match kind {
        RuleKind::AnomalyAction => serde_yaml::from_str::<AnomalyAction>(yaml).map(Rule::from),
        RuleKind::PredictiveScale => serde_yaml::from_str::<PredictiveScale>(yaml).map(Rule::from),
        RuleKind::SloViolation => serde_yaml::from_str::<SLOViolation>(yaml).map(Rule::from),
    };
    let mut rule = match typed {
        Ok(rule) => rule,
        Err(error) => return reject(error_text(error)),
    };

    // serde ignores fields it does not know; the API server refuses them (kubectl's
    // strict field validation), and a silently ignored typo such as `treshold` would
    // make a very different rule. Whatever does not survive a round trip is unknown.
    if let Ok(known) = serde_yaml::to_value(&rule) {
        let mut unknown = Vec::new();
        find_unknown_fields(&document, &known, "", &mut unknown);
        if !unknown.is_empty() {
            return reject(format!(
                "unknown field{} {} (not in the {kind} schema)",
                if unknown.len() == 1 { "" } else { "s" },
                unknown.join(", ")
            ));
        }
    }

    // The CRD schema lets the API server refuse an `sli` with both or neither
    // indicator; a missing `sli` is allowed there and reported when compiling.
    if let Rule::SloViolation(slo) = &rule
        && let Some(sli) = &slo.spec.sli
        && let Err(invalid) = sli.indicator()
    {
        return reject(invalid.to_string());
    }

    rule.metadata_mut()
        .namespace
        .get_or_insert_with(|| DEFAULT_NAMESPACE.to_owned());
    DocumentOutcome::Rule(Box::new(rule))
}

/// Whether a document is some other Kubernetes object rather than a Prophet rule: its
/// group is not Prophet's and its kind is not (in any letter case) a Prophet kind. A
/// Prophet kind under another group, or another kind under Prophet's group, is more
/// likely a mistake in a rule, and is reported.
fn is_other_object(api_version: &str, kind: &str) -> bool {
    // `v1` is the core group; `apps/v1` names its group before the slash.
    let group = api_version
        .rsplit_once('/')
        .map_or("", |(group, _version)| group);
    let prophet_kind = RuleKind::ALL
        .into_iter()
        .any(|known| known.as_str().eq_ignore_ascii_case(kind));
    group != GROUP && !kind.is_empty() && !prophet_kind
}

/// How deeply `[` and `{` nest in `yaml`, counting every one (in strings and comments
/// too, which can only overstate the nesting) and never letting a closer take the count
/// below zero, so stray closers cannot hide openers that follow. One pass, no
/// allocation.
fn flow_depth(yaml: &str) -> usize {
    let mut depth = 0usize;
    let mut deepest = 0usize;
    for byte in yaml.bytes() {
        match byte {
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// A serde_yaml error's message with its positions counted in the file's lines: the
/// parser saw the document alone, whose first line is line `first_line` of the file.
/// Positions appear as `at line L column C` (twice in some libyaml messages); only
/// those are shifted.
fn file_lines(error: &serde_yaml::Error, first_line: usize) -> String {
    let message = error.to_string();
    let offset = first_line.saturating_sub(1);
    if offset == 0 {
        return message;
    }
    const MARK: &str = "at line ";
    let mut shifted = String::with_capacity(message.len() + 8);
    let mut rest = message.as_str();
    while let Some(at) = rest.find(MARK) {
        let (before, from_mark) = rest.split_at(at + MARK.len());
        shifted.push_str(before);
        let digits = from_mark.bytes().take_while(u8::is_ascii_digit).count();
        let (number, after) = from_mark.split_at(digits);
        match number.parse::<usize>() {
            Ok(line) if after.starts_with(" column ") => {
                shifted.push_str(&line.saturating_add(offset).to_string());
            }
            _ => shifted.push_str(number),
        }
        rest = after;
    }
    shifted.push_str(rest);
    // serde_yaml names no position for the document's very first character.
    if error
        .location()
        .is_some_and(|at| at.line() == 1 && at.column() == 1)
        && !message.contains(MARK)
    {
        shifted.push_str(&format!(" at line {first_line} column 1"));
    }
    shifted
}

fn wrong_api_version(api_version: &str) -> String {
    match api_version.split_once('/') {
        Some((group, version)) if group == GROUP => format!(
            "unsupported apiVersion {api_version:?}: this Prophet reads version {} of {GROUP}, not {version}",
            crate::rules::crd::VERSION
        ),
        _ => format!("apiVersion {api_version:?} is not a Prophet rule: expected {API_VERSION}"),
    }
}

fn unknown_kind(kind: Option<&str>) -> String {
    let expected = "expected AnomalyAction, PredictiveScale or SLOViolation";
    let Some(kind) = kind else {
        return format!("missing kind: {expected}");
    };
    let near_miss = RuleKind::ALL
        .into_iter()
        .find(|known| known.as_str().eq_ignore_ascii_case(kind));
    match near_miss {
        Some(known) => {
            format!("unknown kind {kind:?}: kinds are case-sensitive, did you mean {known}?")
        }
        None => format!("unknown kind {kind:?}: {expected}"),
    }
}

/// Collects the paths of mapping keys in `original` that are absent from `known`.
///
/// Keys whose value is empty (null, `{}`, `[]`) are allowed to vanish: optional and
/// defaulted fields are not written back when empty.
fn find_unknown_fields(original: &Value, known: &Value, path: &str, unknown: &mut Vec<String>) {
    match (original, known) {
        (Value::Mapping(original), Value::Mapping(known)) => {
            // Indexed once per mapping: a label map with thousands of keys would otherwise
            // be searched once per key.
            let known: HashMap<String, &Value> = known
                .iter()
                .filter_map(|(key, value)| Some((scalar_text(key)?, value)))
                .collect();
            for (key, value) in original {
                let Some(key_text) = scalar_text(key) else {
                    continue;
                };
                let child_path = if path.is_empty() {
                    key_text.clone()
                } else {
                    format!("{path}.{key_text}")
                };
                match known.get(&key_text) {
                    Some(known_value) => {
                        find_unknown_fields(value, known_value, &child_path, unknown);
                    }
                    None if is_empty(value) => {}
                    None => unknown.push(child_path),
                }
            }
        }
        (Value::Sequence(original), Value::Sequence(known)) => {
            for (index, (value, known_value)) in original.iter().zip(known).enumerate() {
                find_unknown_fields(value, known_value, &format!("{path}[{index}]"), unknown);
            }
        }
        _ => {}
    }
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Mapping(mapping) => mapping.is_empty(),
        Value::Sequence(sequence) => sequence.is_empty(),
        _ => false,
    }
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// RFC 1123 label, as Kubernetes requires of namespaces.
fn is_dns_label(text: &str) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// RFC 1123 subdomain, as Kubernetes requires of most object names.
fn is_dns_subdomain(text: &str) -> bool {
    text.len() <= 253 && text.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANOMALY: &str = "\
apiVersion: aiops.prophet.io/v1alpha1
kind: AnomalyAction
metadata: {name: memory, namespace: shop}
spec:
  metric: container_memory_working_set_bytes
  threshold: \"> 1Gi\"
  remediation: {type: restart}
";

    fn origin() -> &'static Path {
        Path::new("inline.yaml")
    }

    fn parse(text: &str) -> (Vec<Rule>, Vec<InvalidDoc>) {
        parse_documents(text, origin())
    }

    fn only_invalid(text: &str) -> InvalidDoc {
        let (rules, mut invalid) = parse(text);
        assert!(rules.is_empty(), "expected no rules, got {rules:?}");
        assert_eq!(invalid.len(), 1, "{invalid:#?}");
        invalid.remove(0)
    }

    #[test]
    fn a_valid_rule_loads_with_defaults() {
        let (rules, invalid) = parse(ANOMALY);
        assert!(invalid.is_empty(), "{invalid:#?}");
        let [Rule::AnomalyAction(rule)] = rules.as_slice() else {
            panic!("expected one AnomalyAction, got {rules:?}");
        };
        assert_eq!(rule.spec.remediation.cooldown_seconds, 300);
        assert_eq!(
            rules[0].key().to_string(),
            "AnomalyAction shop/memory",
            "key names kind, namespace and name"
        );
    }

    #[test]
    fn missing_namespace_means_default() {
        let text = ANOMALY.replace(", namespace: shop", "");
        let (rules, invalid) = parse(&text);
        assert!(invalid.is_empty(), "{invalid:#?}");
        assert_eq!(
            rules[0].key(),
            RuleKey {
                kind: RuleKind::AnomalyAction,
                namespace: "default".into(),
                name: "memory".into()
            }
        );
        assert_eq!(rules[0].metadata().namespace.as_deref(), Some("default"));
    }

    #[test]
    fn wrong_api_version_is_refused_with_a_reason() {
        let doc = only_invalid(&ANOMALY.replace("v1alpha1", "v1beta1"));
        assert_eq!(doc.document, Some(1));
        assert_eq!(doc.kind.as_deref(), Some("AnomalyAction"));
        assert_eq!(doc.name.as_deref(), Some("memory"));
        assert!(
            doc.reason.contains("\"aiops.prophet.io/v1beta1\""),
            "{}",
            doc.reason
        );
        assert!(doc.reason.contains("v1alpha1"), "{}", doc.reason);

        let doc = only_invalid(&ANOMALY.replace("aiops.prophet.io/v1alpha1", "apps/v1"));
        assert!(
            doc.reason.contains("is not a Prophet rule"),
            "{}",
            doc.reason
        );

        let doc = only_invalid(&ANOMALY.replace("apiVersion: aiops.prophet.io/v1alpha1\n", ""));
        assert!(
            doc.reason.starts_with("missing apiVersion"),
            "{}",
            doc.reason
        );
    }

    #[test]
    fn other_kubernetes_objects_are_skipped_not_reported() {
        let namespace = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n";
        let config_map = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: shop}\n";
        let text = format!("{namespace}---\n{ANOMALY}---\n{config_map}");
        let (rules, invalid) = parse(&text);
        assert!(invalid.is_empty(), "{invalid:#?}");
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].key().to_string(), "AnomalyAction shop/memory");

        // A Prophet kind in another group, or another kind in Prophet's group, is a
        // mistaken rule and still reported.
        let doc = only_invalid(&ANOMALY.replace("aiops.prophet.io/v1alpha1", "v1"));
        assert!(
            doc.reason.contains("is not a Prophet rule"),
            "{}",
            doc.reason
        );
        let doc = only_invalid(&ANOMALY.replace("kind: AnomalyAction", "kind: Namespace"));
        assert!(doc.reason.contains("unknown kind"), "{}", doc.reason);
    }

    #[test]
    fn unknown_kind_is_refused() {
        let doc = only_invalid(&ANOMALY.replace("kind: AnomalyAction", "kind: Alerting"));
        assert_eq!(doc.kind.as_deref(), Some("Alerting"));
        assert!(
            doc.reason.contains("unknown kind \"Alerting\""),
            "{}",
            doc.reason
        );

        let doc = only_invalid(&ANOMALY.replace("kind: AnomalyAction", "kind: anomalyaction"));
        assert!(
            doc.reason.contains("did you mean AnomalyAction"),
            "{}",
            doc.reason
        );
    }

    #[test]
    fn missing_spec_field_names_its_path_and_line() {
        let doc = only_invalid(&ANOMALY.replace("remediation: {type: restart}", "remediation: {}"));
        assert!(doc.reason.contains("spec.remediation"), "{}", doc.reason);
        assert!(
            doc.reason.contains("missing field `type`"),
            "{}",
            doc.reason
        );
        assert!(doc.reason.contains("line 7"), "{}", doc.reason);
        assert!(!doc.reason.contains('\n'));

        let doc =
            only_invalid(&ANOMALY.replace("  metric: container_memory_working_set_bytes\n", ""));
        assert!(
            doc.reason.contains("missing field `metric`"),
            "{}",
            doc.reason
        );
    }

    #[test]
    fn bad_enum_value_lists_the_choices() {
        let doc = only_invalid(&ANOMALY.replace("type: restart", "type: reboot"));
        assert!(
            doc.reason.contains("spec.remediation.type"),
            "{}",
            doc.reason
        );
        assert!(doc.reason.contains("restart"), "{}", doc.reason);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let doc = only_invalid(&ANOMALY.replace("threshold:", "treshold:"));
        assert_eq!(
            doc.reason,
            "unknown field spec.treshold (not in the AnomalyAction schema)"
        );
        let doc = only_invalid(&ANOMALY.replace(
            "{type: restart}",
            "{type: restart, cooldown: 5, podSelector: {app: x}}",
        ));
        assert!(
            doc.reason.contains("spec.remediation.cooldown "),
            "{}",
            doc.reason
        );
        // Empty optional values are fine even though they are not written back.
        let (rules, invalid) = parse(&ANOMALY.replace(
            "{type: restart}",
            "{type: restart, podSelector: {}, replicas: null}",
        ));
        assert!(invalid.is_empty(), "{invalid:#?}");
        assert_eq!(rules.len(), 1);
    }

    #[test]
    fn names_must_be_kubernetes_names() {
        let doc = only_invalid(&ANOMALY.replace("name: memory", "name: Memory_Rule"));
        assert!(doc.reason.contains("\"Memory_Rule\""), "{}", doc.reason);
        let doc = only_invalid(&ANOMALY.replace("name: memory, ", ""));
        assert_eq!(doc.reason, "metadata.name is required");
        let doc = only_invalid(&ANOMALY.replace("namespace: shop", "namespace: shop.eu"));
        assert!(doc.reason.contains("namespace"), "{}", doc.reason);
    }

    #[test]
    fn duplicates_keep_the_first() {
        let text = format!("{ANOMALY}---\n{ANOMALY}");
        let (rules, invalid) = parse(&text);
        assert_eq!(rules.len(), 1);
        assert_eq!(invalid.len(), 1, "{invalid:#?}");
        assert_eq!(invalid[0].document, Some(2));
        assert_eq!(invalid[0].line, Some(8));
        assert_eq!(
            invalid[0].reason,
            "duplicate AnomalyAction shop/memory: already loaded from inline.yaml document 1"
        );
        // The same name in another namespace or of another kind is a different rule.
        let other_namespace = ANOMALY.replace("namespace: shop", "namespace: web");
        let (rules, invalid) = parse(&format!("{ANOMALY}---\n{other_namespace}"));
        assert_eq!((rules.len(), invalid.len()), (2, 0));
    }

    #[test]
    fn one_bad_document_keeps_the_others() {
        let bad = ANOMALY
            .replace("name: memory", "name: broken")
            .replace("threshold", "limit");
        let second = ANOMALY.replace("name: memory", "name: second");
        let text = format!(
            "# leading comment\n---\n{ANOMALY}---\n{bad}---\n---\n# only a comment\n---\n{second}"
        );
        let (rules, invalid) = parse(&text);
        let names: Vec<String> = rules.iter().map(|rule| rule.key().name).collect();
        assert_eq!(names, ["memory", "second"]);
        assert_eq!(invalid.len(), 1, "{invalid:#?}");
        assert_eq!(invalid[0].document, Some(2));
        assert_eq!(invalid[0].line, Some(10));
        assert_eq!(invalid[0].name.as_deref(), Some("broken"));
        let shown = invalid[0].to_string();
        assert!(
            shown.starts_with("inline.yaml document 2 (line 10): AnomalyAction shop/broken: unknown field spec.limit"),
            "{shown}"
        );
    }

    #[test]
    fn yaml_syntax_errors_and_non_objects_are_refused() {
        let text = format!("{ANOMALY}---\nspec: [unclosed\n---\n- a list\n");
        let (rules, invalid) = parse(&text);
        assert_eq!(rules.len(), 1);
        assert_eq!(invalid.len(), 2, "{invalid:#?}");
        assert!(
            invalid[0].reason.starts_with("not valid YAML"),
            "{}",
            invalid[0].reason
        );
        assert!(
            invalid[0].reason.contains("line 9"),
            "file line numbers: {}",
            invalid[0].reason
        );
        assert!(
            invalid[1].reason.contains("found a list"),
            "{}",
            invalid[1].reason
        );
    }

    #[test]
    fn sli_with_both_indicators_is_refused() {
        let slo = "\
apiVersion: aiops.prophet.io/v1alpha1
kind: SLOViolation
metadata: {name: slo}
spec:
  sloName: api
  sloTarget: 99.9%
  errorBudgetThreshold: 0.1
  sli:
    ratio: {errors: 'e', total: 't'}
    latency: {bucket: 'b', le: '0.3'}
";
        let doc = only_invalid(slo);
        assert!(
            doc.reason.contains("both ratio and latency"),
            "{}",
            doc.reason
        );
        let (rules, invalid) = parse(&slo.replace("    latency: {bucket: 'b', le: '0.3'}\n", ""));
        assert!(invalid.is_empty(), "{invalid:#?}");
        let Rule::SloViolation(slo) = &rules[0] else {
            panic!("expected an SLOViolation");
        };
        assert_eq!(slo.spec.period, "30d");
        assert!(slo.spec.indicator().is_ok());
    }

    #[test]
    fn splitting_counts_documents_like_yaml() {
        let counts = |text: &str| -> Vec<(usize, usize)> {
            split_documents(text)
                .iter()
                .map(|doc| (doc.index, doc.first_line))
                .collect()
        };
        assert_eq!(counts("a: 1\n"), [(1, 1)]);
        assert_eq!(counts("---\na: 1\n"), [(1, 1)]);
        assert_eq!(counts("# c\n---\na: 1\n---\nb: 2"), [(1, 2), (2, 4)]);
        assert_eq!(counts("a: 1\n---\n---\nb: 2\n"), [(1, 1), (2, 2), (3, 3)]);
        assert_eq!(counts("a: 1\n...\n---\nb: 2\n"), [(1, 1), (2, 3)]);
        assert_eq!(counts("--- {a: 1}\n--- {b: 2}\n"), [(1, 1), (2, 2)]);
        assert_eq!(counts("a: |\n  ---x\n----\n"), [(1, 1)]);
        assert!(counts("").is_empty());
        assert!(counts("# nothing\n\n").is_empty());
        let inline = split_documents("x: 1\n--- {a: 1}\n");
        assert_eq!(
            serde_yaml::from_str::<Value>(&inline[1].yaml).ok(),
            serde_yaml::from_str::<Value>("{a: 1}").ok()
        );
    }

    #[test]
    fn windows_line_endings_and_byte_order_marks_are_fine() {
        let text = format!(
            "\u{feff}{}---\r\n{}",
            ANOMALY.replace('\n', "\r\n"),
            ANOMALY.replace("memory", "other").replace('\n', "\r\n")
        );
        let (rules, invalid) = parse(&text);
        assert!(invalid.is_empty(), "{invalid:#?}");
        assert_eq!(rules.len(), 2);
    }

    #[test]
    fn load_dir_reads_yaml_files_in_name_order_and_reports_duplicates_across_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |name: &str, text: &str| fs::write(dir.path().join(name), text).expect(name);
        write("b.yml", &ANOMALY.replace("name: memory", "name: from-b"));
        write("a.yaml", ANOMALY);
        write("c.yaml", ANOMALY);
        write("notes.txt", "not yaml: [");
        fs::create_dir(dir.path().join("nested.yaml")).expect("nested dir");
        fs::write(dir.path().join("nested.yaml").join("x.yaml"), ANOMALY).expect("nested file");
        fs::write(dir.path().join("d.yaml"), [0xff, 0xfe, 0x00]).expect("binary file");

        let report = load_dir(dir.path()).expect("load");
        let names: Vec<String> = report.rules.iter().map(|rule| rule.key().name).collect();
        assert_eq!(names, ["memory", "from-b"]);
        assert_eq!(report.invalid.len(), 2, "{:#?}", report.invalid);
        assert!(report.invalid[0].file.ends_with("c.yaml"));
        assert!(
            report.invalid[0].reason.contains("a.yaml document 1"),
            "{}",
            report.invalid[0].reason
        );
        assert!(report.invalid[1].file.ends_with("d.yaml"));
        assert_eq!(report.invalid[1].document, None);
        assert!(report.invalid[1].reason.starts_with("cannot read file"));
    }

    #[test]
    fn ten_thousand_documents_load_and_each_is_cut_out_once() {
        let text: Vec<String> = (0..10_000)
            .map(|i| ANOMALY.replace("name: memory", &format!("name: rule-{i}")))
            .collect();
        let text = text.join("---\n");
        // Linear: the documents handed to the parser hold the text once (the `---`
        // lines become three spaces), not each document padded with the lines before it.
        let handed: usize = split_documents(&text).iter().map(|d| d.yaml.len()).sum();
        assert!(
            handed <= text.len(),
            "{handed} bytes parsed of {}",
            text.len()
        );
        let (rules, invalid) = parse(&text);
        assert!(
            invalid.is_empty(),
            "{:#?}",
            &invalid[..invalid.len().min(3)]
        );
        assert_eq!(rules.len(), 10_000);
        assert_eq!(rules[9_999].key().name, "rule-9999");
    }

    #[test]
    fn eighty_thousand_empty_documents_are_handled() {
        let text = "---\n".repeat(80_000);
        let handed: usize = split_documents(&text).iter().map(|d| d.yaml.len()).sum();
        assert!(
            handed <= text.len(),
            "{handed} bytes parsed of {}",
            text.len()
        );
        let (rules, invalid) = parse(&format!("{text}{ANOMALY}"));
        assert!(invalid.is_empty(), "{invalid:#?}");
        assert_eq!(rules.len(), 1);
    }

    #[test]
    fn errors_in_later_documents_name_the_files_lines() {
        let broken = ANOMALY
            .replace("name: memory", "name: broken")
            .replace("{type: restart}", "{}");
        let text = format!("{ANOMALY}---\n{broken}");
        let doc = only_invalid_of(&text);
        assert_eq!(doc.line, Some(8));
        // `remediation: {}` is the 7th line after the `---` on line 8: line 15.
        assert!(
            doc.reason
                .contains("missing field `type` at line 15 column"),
            "{}",
            doc.reason
        );
    }

    /// The one refused document of a text whose other documents load.
    fn only_invalid_of(text: &str) -> InvalidDoc {
        let (_rules, mut invalid) = parse(text);
        assert_eq!(invalid.len(), 1, "{invalid:#?}");
        invalid.remove(0)
    }

    #[test]
    fn deep_flow_nesting_is_refused_unparsed_and_the_others_load() {
        let deep = format!("spec: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        let second = ANOMALY.replace("name: memory", "name: second");
        let text = format!("{ANOMALY}---\n{deep}---\n{second}");
        let (rules, invalid) = parse(&text);
        assert_eq!(rules.len(), 2);
        assert_eq!(invalid.len(), 1, "{invalid:#?}");
        assert_eq!(invalid[0].document, Some(2));
        assert_eq!(invalid[0].line, Some(8));
        assert_eq!(
            invalid[0].reason,
            "not read: its YAML flow collections ([ and {) nest 100000 deep, over the limit of 64"
        );
        // At the limit it is parsed (and refused for what it is, not for its depth).
        let at_limit = format!("spec: {}{}\n", "[".repeat(64), "]".repeat(64));
        let doc = only_invalid(&at_limit);
        assert!(!doc.reason.contains("nest"), "{}", doc.reason);
    }

    #[test]
    fn deep_block_nesting_and_alias_bombs_are_refused() {
        let doc = only_invalid(&format!("{}x\n", "- ".repeat(100_000)));
        assert!(
            doc.reason.contains("recursion limit exceeded"),
            "{}",
            doc.reason
        );
        let mut bomb = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n".to_owned();
        for i in 1..9 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            bomb.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        let doc = only_invalid(&bomb);
        assert!(
            doc.reason.contains("repetition limit exceeded"),
            "{}",
            doc.reason
        );
    }

    #[test]
    fn a_file_over_the_size_limit_is_refused_whole_and_the_others_load() {
        let dir = tempfile::tempdir().expect("temp dir");
        let padding = "# padding\n".repeat((MAX_FILE_BYTES as usize) / 10 + 1);
        fs::write(dir.path().join("a-big.yaml"), format!("{ANOMALY}{padding}")).expect("big");
        fs::write(
            dir.path().join("b.yaml"),
            ANOMALY.replace("memory", "other"),
        )
        .expect("small");
        let report = load_dir(dir.path()).expect("load");
        let names: Vec<String> = report.rules.iter().map(|rule| rule.key().name).collect();
        assert_eq!(names, ["other"]);
        assert_eq!(report.invalid.len(), 1, "{:#?}", report.invalid);
        let refused = &report.invalid[0];
        assert!(refused.file.ends_with("a-big.yaml"));
        assert_eq!(refused.document, None);
        assert!(
            refused
                .reason
                .ends_with("over the limit of 4194304 bytes (4 MiB) for one rules file: split it into several files"),
            "{}",
            refused.reason
        );
    }

    #[test]
    fn only_the_first_hundred_refusals_of_a_file_are_listed() {
        let text = format!("{}---\n{ANOMALY}", "---\nnot a rule\n".repeat(1_000));
        let (rules, invalid) = parse(&text);
        assert_eq!(rules.len(), 1, "the rule after them still loads");
        assert_eq!(invalid.len(), MAX_REFUSALS_LISTED + 1);
        assert_eq!(invalid[99].document, Some(100));
        let summary = &invalid[MAX_REFUSALS_LISTED];
        assert_eq!(summary.document, None);
        assert_eq!(
            summary.to_string(),
            "inline.yaml: 900 more documents were not loaded: only the first 100 refused documents of a file are listed"
        );
    }

    #[test]
    fn only_an_unreadable_folder_is_an_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("missing");
        let error = load_dir(&missing).expect_err("missing folder");
        assert!(error.to_string().contains("missing"), "{error}");
        assert_eq!(
            load_dir(dir.path()).expect("empty folder"),
            LoadReport::default()
        );
    }
}
