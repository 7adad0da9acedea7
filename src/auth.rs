//! Who may speak to the ingest surface: the credentials `POST /api/v1/write` (and the
//! JSON APIs behind the same gate) accept, read from files that are re-read when they
//! change, and the predicate that keeps an unauthenticated ingest from ever driving real
//! actions.
//!
//! A request is admitted when it carries **any** configured credential: a bearer token
//! from `--write-token-file`, a user and password from `--write-basic-auth-file`, or a
//! client certificate verified against `--client-ca-file` during the TLS handshake (the
//! server loop marks such a connection's requests with [`VerifiedClientCertificate`]).
//! With none configured the gate is open, as Prophet has always been.
//!
//! Credentials are compared as SHA-256 digests with a constant-time equality over every
//! stored one, so the time a refusal takes tells neither which bytes nor how many were
//! right. They are never logged, nor is what a request presented. This module decides;
//! it does no I/O but reading its own files.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use base64::Engine;
use subtle::ConstantTimeEq;

/// Set on a request by the server loop when its connection presented a client
/// certificate that chained to `--client-ca-file` (rustls verified it in the handshake).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedClientCertificate;

/// Where the ingest credentials come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthConfig {
    /// Bearer tokens, one per line (blank lines and lines starting with `#` ignored), so
    /// an old and a new token can both be accepted while senders rotate.
    pub token_file: Option<PathBuf>,
    /// `user:password` per line (the password is everything after the first `:`).
    pub basic_auth_file: Option<PathBuf>,
    /// Client certificates signed by this CA are accepted (needs TLS on the listener).
    pub client_ca_file: Option<PathBuf>,
}

impl AuthConfig {
    /// Whether any credential is required at all.
    pub fn is_configured(&self) -> bool {
        self.token_file.is_some() || self.basic_auth_file.is_some() || self.client_ca_file.is_some()
    }
}

/// A credential file that cannot be used. The message names the file and what is wrong
/// with it, never its contents.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no credential (every line is blank or a comment)")]
    Empty { path: PathBuf },
    #[error("{path} line {line}: expected user:password")]
    BasicAuthLine { path: PathBuf, line: usize },
}

type Digest = [u8; 32];

fn digest(bytes: &[u8]) -> Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

/// True when `presented` is one of `accepted`. Every stored digest is compared, and each
/// comparison takes the same time, so timing reveals nothing about near misses.
fn matches_any(accepted: &[Digest], presented: &[u8]) -> bool {
    let presented = digest(presented);
    accepted
        .iter()
        .fold(subtle::Choice::from(0), |found, d| {
            found | d.ct_eq(&presented)
        })
        .into()
}

/// The credentials in force, as digests.
#[derive(Default, PartialEq, Eq)]
struct Credentials {
    tokens: Vec<Digest>,
    /// Digests of `user:password`, as the basic-auth header carries them once decoded.
    basic: Vec<Digest>,
}

/// The lines of a credential file that hold something: trimmed (a Secret written with
/// `echo` ends in a newline; Prometheus trims its own credential files too), neither
/// blank nor comments.
fn credential_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .map(str::trim)
        .enumerate()
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
        .map(|(i, line)| (i + 1, line))
}

fn read(path: &Path) -> Result<String, AuthError> {
    std::fs::read_to_string(path).map_err(|source| AuthError::Read {
        path: path.to_owned(),
        source,
    })
}

fn load_tokens(path: &Path) -> Result<Vec<Digest>, AuthError> {
    let text = read(path)?;
    let tokens: Vec<Digest> = credential_lines(&text)
        .map(|(_, token)| digest(token.as_bytes()))
        .collect();
    if tokens.is_empty() {
        return Err(AuthError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(tokens)
}

fn load_basic(path: &Path) -> Result<Vec<Digest>, AuthError> {
    let text = read(path)?;
    let mut pairs = Vec::new();
    for (line, pair) in credential_lines(&text) {
        match pair.split_once(':') {
            Some((user, _)) if !user.is_empty() => pairs.push(digest(pair.as_bytes())),
            _ => {
                return Err(AuthError::BasicAuthLine {
                    path: path.to_owned(),
                    line,
                });
            }
        }
    }
    if pairs.is_empty() {
        return Err(AuthError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(pairs)
}

/// Why a request was refused: what a log line at debug level may say (never what was
/// presented).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No credential of an accepted kind.
    Missing,
    /// A credential was presented and is not one of those accepted.
    Wrong,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "no credential",
            Self::Wrong => "wrong credential",
        }
    }
}

/// The ingest gate: the credentials in force and the files they come from.
pub struct Gate {
    config: AuthConfig,
    current: RwLock<Arc<Credentials>>,
}

impl Gate {
    /// Reads the credential files; an unreadable or empty one is an error, so a typo in a
    /// path never starts an open Prophet that was meant to be closed.
    pub fn load(config: AuthConfig) -> Result<Self, AuthError> {
        let credentials = Self::read_files(&config)?;
        Ok(Self {
            config,
            current: RwLock::new(Arc::new(credentials)),
        })
    }

    /// A gate that admits everyone (no credential configured).
    pub fn open() -> Self {
        Self {
            config: AuthConfig::default(),
            current: RwLock::new(Arc::new(Credentials::default())),
        }
    }

    fn read_files(config: &AuthConfig) -> Result<Credentials, AuthError> {
        Ok(Credentials {
            tokens: match &config.token_file {
                Some(path) => load_tokens(path)?,
                None => Vec::new(),
            },
            basic: match &config.basic_auth_file {
                Some(path) => load_basic(path)?,
                None => Vec::new(),
            },
        })
    }

    /// True when every request is admitted.
    pub fn is_open(&self) -> bool {
        !self.config.is_configured()
    }

    /// The credential files this gate reads (to follow them for changes).
    pub fn files(&self) -> Vec<PathBuf> {
        [&self.config.token_file, &self.config.basic_auth_file]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    /// Re-reads the files. On error the credentials in force stay, so a half-written
    /// Secret never locks every sender out (nor lets everyone in). `Ok(true)` when the
    /// credentials changed.
    pub fn reload(&self) -> Result<bool, AuthError> {
        let credentials = Self::read_files(&self.config)?;
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if **current == credentials {
            return Ok(false);
        }
        *current = Arc::new(credentials);
        Ok(true)
    }

    /// Admits or refuses a request by its headers and, when its connection presented a
    /// verified client certificate, by that.
    pub fn check(
        &self,
        headers: &HeaderMap,
        certificate: Option<VerifiedClientCertificate>,
    ) -> Result<(), Refusal> {
        if self.is_open() {
            return Ok(());
        }
        if certificate.is_some() && self.config.client_ca_file.is_some() {
            return Ok(());
        }
        // std RwLock: held only to clone the Arc.
        let credentials = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(authorization) = headers.get(AUTHORIZATION) else {
            return Err(Refusal::Missing);
        };
        let value = authorization.as_bytes();
        let Some(space) = value.iter().position(|&b| b == b' ') else {
            return Err(Refusal::Wrong);
        };
        let (scheme, rest) = value.split_at(space);
        let rest = rest.trim_ascii();
        let admitted = if scheme.eq_ignore_ascii_case(b"bearer") {
            matches_any(&credentials.tokens, rest)
        } else if scheme.eq_ignore_ascii_case(b"basic") {
            base64::engine::general_purpose::STANDARD
                .decode(rest)
                .is_ok_and(|pair| matches_any(&credentials.basic, &pair))
        } else {
            false
        };
        if admitted {
            Ok(())
        } else {
            Err(Refusal::Wrong)
        }
    }

    /// The `WWW-Authenticate` challenges a refusal carries: one per scheme accepted.
    pub fn challenges(&self) -> Vec<&'static str> {
        let mut challenges = Vec::new();
        if self.config.token_file.is_some() {
            challenges.push(r#"Bearer realm="prophet""#);
        }
        if self.config.basic_auth_file.is_some() {
            challenges.push(r#"Basic realm="prophet", charset="UTF-8""#);
        }
        if challenges.is_empty() {
            // Only client certificates are accepted: no header scheme would do, but a 401
            // must still name one (RFC 9110).
            challenges.push(r#"Bearer realm="prophet", error="invalid_request", error_description="a client certificate is required""#);
        }
        challenges
    }
}

/// Whether what Prophet ingests may drive real actions (evictions, scaling, rollbacks).
/// The actuator calls this before it acts for real; cluster mode calls it at start.
///
/// An unauthenticated ingest lets anyone who reaches the port forge the samples every
/// rule believes. With real actions on, that is refused unless the operator said
/// `--allow-unauthenticated-write`; while every action is dry run it is allowed, and the
/// caller says so loudly.
pub fn ingest_may_drive_actions(
    ingest_authenticated: bool,
    real_actions: bool,
    allow_unauthenticated_write: bool,
) -> Result<IngestSafety, UnauthenticatedIngest> {
    match (
        ingest_authenticated,
        real_actions,
        allow_unauthenticated_write,
    ) {
        (true, _, _) => Ok(IngestSafety::Authenticated),
        (false, _, true) => Ok(IngestSafety::AllowedUnauthenticated),
        (false, false, false) => Ok(IngestSafety::UnauthenticatedDryRun),
        (false, true, false) => Err(UnauthenticatedIngest),
    }
}

/// What [`ingest_may_drive_actions`] found acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestSafety {
    /// Every write carries a credential.
    Authenticated,
    /// Unauthenticated, as `--allow-unauthenticated-write` says.
    AllowedUnauthenticated,
    /// Unauthenticated, and nothing is acted on for real.
    UnauthenticatedDryRun,
}

/// Real actions on an unauthenticated ingest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "refusing to act on an unauthenticated remote-write endpoint: anyone who can reach it could forge the samples the rules act on. Give --write-token-file, --write-basic-auth-file or --client-ca-file, or --allow-unauthenticated-write to accept the risk"
)]
pub struct UnauthenticatedIngest;

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_str(authorization).unwrap());
        headers
    }

    fn basic(pair: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }

    fn gate_with(tokens: Option<&str>, basic: Option<&str>, ca: bool) -> (tempfile::TempDir, Gate) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = AuthConfig::default();
        if let Some(tokens) = tokens {
            let path = dir.path().join("tokens");
            std::fs::write(&path, tokens).unwrap();
            config.token_file = Some(path);
        }
        if let Some(basic) = basic {
            let path = dir.path().join("basic");
            std::fs::write(&path, basic).unwrap();
            config.basic_auth_file = Some(path);
        }
        if ca {
            config.client_ca_file = Some(dir.path().join("ca.pem"));
        }
        let gate = Gate::load(config).unwrap();
        (dir, gate)
    }

    #[test]
    fn no_credential_configured_admits_everyone() {
        let gate = Gate::open();
        assert!(gate.is_open());
        assert_eq!(gate.check(&HeaderMap::new(), None), Ok(()));
    }

    #[test]
    fn any_listed_token_is_admitted_and_nothing_else() {
        let (_dir, gate) = gate_with(
            Some("# rotation: old, then new\nold-token\n\n  new-token  \n"),
            None,
            false,
        );
        assert_eq!(gate.check(&headers("Bearer old-token"), None), Ok(()));
        assert_eq!(gate.check(&headers("bearer new-token"), None), Ok(()));
        assert_eq!(gate.check(&HeaderMap::new(), None), Err(Refusal::Missing));
        for wrong in [
            "Bearer old-toke",
            "Bearer old-token2",
            "Bearer ",
            "Bearer # rotation: old, then new",
            "Token old-token",
            "old-token",
            &basic("old-token:"),
        ] {
            assert_eq!(
                gate.check(&headers(wrong), None),
                Err(Refusal::Wrong),
                "{wrong}"
            );
        }
        // A certificate counts only when a client CA is configured.
        assert_eq!(
            gate.check(&HeaderMap::new(), Some(VerifiedClientCertificate)),
            Err(Refusal::Missing)
        );
        assert_eq!(gate.challenges(), vec![r#"Bearer realm="prophet""#]);
    }

    #[test]
    fn basic_auth_compares_user_and_password_together() {
        let (_dir, gate) = gate_with(
            None,
            Some("prometheus:s3cret:with colon\nother:pw\n"),
            false,
        );
        assert_eq!(
            gate.check(&headers(&basic("prometheus:s3cret:with colon")), None),
            Ok(())
        );
        assert_eq!(gate.check(&headers(&basic("other:pw")), None), Ok(()));
        for wrong in [
            "prometheus:pw",
            "other:s3cret:with colon",
            "prometheus:",
            "other",
        ] {
            assert_eq!(
                gate.check(&headers(&basic(wrong)), None),
                Err(Refusal::Wrong),
                "{wrong}"
            );
        }
        assert_eq!(gate.check(&headers("Basic !!!"), None), Err(Refusal::Wrong));
        assert_eq!(
            gate.check(&headers("Bearer other:pw"), None),
            Err(Refusal::Wrong)
        );
    }

    #[test]
    fn a_verified_client_certificate_is_enough_when_a_client_ca_is_configured() {
        let (_dir, gate) = gate_with(Some("t\n"), None, true);
        assert_eq!(
            gate.check(&HeaderMap::new(), Some(VerifiedClientCertificate)),
            Ok(())
        );
        assert_eq!(gate.check(&headers("Bearer t"), None), Ok(()));
        assert_eq!(gate.check(&HeaderMap::new(), None), Err(Refusal::Missing));
        let (_dir, certificates_only) = gate_with(None, None, true);
        assert!(!certificates_only.is_open());
        assert_eq!(
            certificates_only.check(&headers("Bearer t"), None),
            Err(Refusal::Wrong)
        );
        assert_eq!(certificates_only.challenges().len(), 1);
    }

    #[test]
    fn a_rotation_takes_effect_on_reload_and_a_broken_file_keeps_the_old_credentials() {
        let (dir, gate) = gate_with(Some("old\n"), None, false);
        let path = dir.path().join("tokens");
        assert!(!gate.reload().unwrap(), "unchanged");
        std::fs::write(&path, "old\nnew\n").unwrap();
        assert!(gate.reload().unwrap());
        assert_eq!(gate.check(&headers("Bearer new"), None), Ok(()));
        assert_eq!(gate.check(&headers("Bearer old"), None), Ok(()));
        std::fs::write(&path, "new\n").unwrap();
        assert!(gate.reload().unwrap());
        assert_eq!(
            gate.check(&headers("Bearer old"), None),
            Err(Refusal::Wrong)
        );

        std::fs::write(&path, "\n# nothing\n").unwrap();
        assert!(matches!(gate.reload(), Err(AuthError::Empty { .. })));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(gate.reload(), Err(AuthError::Read { .. })));
        assert_eq!(gate.check(&headers("Bearer new"), None), Ok(()), "kept");
    }

    #[test]
    fn unusable_files_refuse_to_start_and_never_show_their_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("basic");
        std::fs::write(&path, "ok:pw\nsecret-without-colon\n").unwrap();
        let error = Gate::load(AuthConfig {
            basic_auth_file: Some(path),
            ..AuthConfig::default()
        })
        .err()
        .unwrap();
        assert!(error.to_string().contains("line 2"), "{error}");
        assert!(!error.to_string().contains("secret"), "{error}");
        let missing = Gate::load(AuthConfig {
            token_file: Some(dir.path().join("absent")),
            ..AuthConfig::default()
        });
        assert!(matches!(missing, Err(AuthError::Read { .. })));
    }

    #[test]
    fn real_actions_on_an_unauthenticated_ingest_need_the_explicit_flag() {
        use IngestSafety::*;
        assert_eq!(
            ingest_may_drive_actions(true, true, false),
            Ok(Authenticated)
        );
        assert_eq!(
            ingest_may_drive_actions(false, false, false),
            Ok(UnauthenticatedDryRun)
        );
        assert_eq!(
            ingest_may_drive_actions(false, true, true),
            Ok(AllowedUnauthenticated)
        );
        assert_eq!(
            ingest_may_drive_actions(false, true, false),
            Err(UnauthenticatedIngest)
        );
    }
}
