//! `/metrics` behind Kubernetes credentials (`--metrics-auth=kubernetes`), as
//! controller-runtime's secure metrics do it: the caller's bearer token is checked with a
//! TokenReview (who is it?) and a SubjectAccessReview (may they `get` the non-resource
//! URL `/metrics`?). Per-rule metrics name every tenant's rules, so a cluster may want
//! only its scraper to read them.
//!
//! Needs RBAC to create `tokenreviews` (authentication.k8s.io) and
//! `subjectaccessreviews` (authorization.k8s.io); the scraper needs `get` on the
//! non-resource URL `/metrics` (`deploy/components/secure-metrics/`). Answers are cached
//! briefly per token digest, so a scrape every few seconds costs the API server two
//! requests a minute, not two per scrape; the token itself is never kept nor logged.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Client;
use kube::api::{Api, PostParams};

/// How long an answer is reused.
const CACHE_FOR: Duration = Duration::from_secs(30);

/// Answers cached at most; past this, expired ones are dropped, then all.
const CACHE_MAX: usize = 1024;

/// What the API server said about a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Review {
    /// Authenticated and allowed to get `/metrics`.
    Allowed,
    /// Not a valid token (401).
    Unauthenticated,
    /// A valid token whose user may not get `/metrics` (403).
    Forbidden,
}

/// Reviews bearer tokens against the API server.
pub struct MetricsReviewer {
    client: Client,
    cache: Mutex<HashMap<[u8; 32], (Review, Instant)>>,
}

impl MetricsReviewer {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `token` may read `/metrics`. An error is the API server's (unreachable,
    /// or Prophet lacks the RBAC to ask).
    pub async fn review(&self, token: &str) -> Result<Review, kube::Error> {
        let key: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
            .as_ref()
            .try_into()
            .unwrap_or([0; 32]);
        if let Some(review) = self.cached(&key) {
            return Ok(review);
        }
        let review = self.ask(token).await?;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, (_, at)| at.elapsed() < CACHE_FOR);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(key, (review, Instant::now()));
        Ok(review)
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Review> {
        // std Mutex: held for a lookup, never across an await.
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(key)
            .filter(|(_, at)| at.elapsed() < CACHE_FOR)
            .map(|(review, _)| *review)
    }

    async fn ask(&self, token: &str) -> Result<Review, kube::Error> {
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(
                &PostParams::default(),
                &TokenReview {
                    spec: TokenReviewSpec {
                        token: token.to_owned(),
                        audiences: None,
                    },
                    ..TokenReview::default()
                },
            )
            .await?;
        let Some(status) = reviewed.status else {
            return Ok(Review::Unauthenticated);
        };
        let (true, Some(user)) = (status.authenticated.unwrap_or(false), status.user) else {
            return Ok(Review::Unauthenticated);
        };
        let access = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(
                &PostParams::default(),
                &SubjectAccessReview {
                    spec: SubjectAccessReviewSpec {
                        user: user.username,
                        uid: user.uid,
                        groups: user.groups,
                        extra: user.extra,
                        non_resource_attributes: Some(NonResourceAttributes {
                            path: Some("/metrics".to_owned()),
                            verb: Some("get".to_owned()),
                        }),
                        resource_attributes: None,
                    },
                    ..SubjectAccessReview::default()
                },
            )
            .await?;
        Ok(if access.status.is_some_and(|s| s.allowed) {
            Review::Allowed
        } else {
            Review::Forbidden
        })
    }
}
