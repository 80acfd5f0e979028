//! Why a credential is in the state it is in: one enum for condition reasons, event reasons,
//! metric labels and the retry class, so a rename can never split them (Stackable's
//! `ReconcilerError::category()` is the model). A failure's event has the same reason as the
//! condition it sets.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    // success
    /// The first token was written.
    TokenIssued,
    /// A token was replaced by a newer one.
    TokenRenewed,
    /// A token the provider issued earlier (kept in the state Secret) was written out.
    TokenRestored,
    /// `Ready` stays True: the token in place is valid, but renewals fail (see `Degraded`).
    RenewalFailing,
    /// The token in place expired and no renewal has failed (e.g. the operator was down).
    TokenExpired,
    // the spec, the inputs and the objects around them
    InputsNotFound,
    /// The inputs Secret lacks the opt-in label `tokensync.dev/inputs=true`.
    InputsNotOptedIn,
    InputKeyMissing,
    /// An input a request needs is empty or not text.
    InvalidInputs,
    InvalidSpec,
    SecretOwnedElsewhere,
    NeedsNewInputs,
    UpstreamNotReady,
    CABundleNotFound,
    InsecureURL,
    HostNotAllowed,
    /// The operator's RBAC does not allow what it needs.
    Forbidden,
    // the provider
    ProviderUnreachable,
    Unauthorized,
    /// The provider refused the requested scopes (`invalid_scope`).
    InvalidScope,
    RateLimited,
    TokenRequestFailed,
    /// The answer was a success but not usable (no token, an expiry already past, ...).
    InvalidTokenResponse,
    RefreshTokenRejected,
    // warnings that do not fail a renewal
    /// The provider's lifetime was beyond the cap and was shortened.
    LifetimeClamped,
    /// The refresh token is near its deadline: the primary grant runs.
    RefreshTokenExpiring,
    /// A token was issued but its expiry could not be read: it is kept with the requested
    /// lifetime or the fallback interval.
    ExpiryUnreadable,
    // writing
    /// The apiserver refused to store the output or state Secret.
    SecretWriteFailed,
    // revocation and the apiserver
    TokenRevoked,
    RevocationFailed,
    RevocationPending,
    KubernetesAPI,
    /// A reconcile panicked; the credential is retried with backoff.
    InternalError,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::TokenIssued => "TokenIssued",
            Reason::TokenRenewed => "TokenRenewed",
            Reason::TokenRestored => "TokenRestored",
            Reason::RenewalFailing => "RenewalFailing",
            Reason::TokenExpired => "TokenExpired",
            Reason::InputsNotFound => "InputsNotFound",
            Reason::InputKeyMissing => "InputKeyMissing",
            Reason::InputsNotOptedIn => "InputsNotOptedIn",
            Reason::InvalidInputs => "InvalidInputs",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::SecretOwnedElsewhere => "SecretOwnedElsewhere",
            Reason::NeedsNewInputs => "NeedsNewInputs",
            Reason::UpstreamNotReady => "UpstreamNotReady",
            Reason::CABundleNotFound => "CABundleNotFound",
            Reason::InsecureURL => "InsecureURL",
            Reason::HostNotAllowed => "HostNotAllowed",
            Reason::Forbidden => "Forbidden",
            Reason::ProviderUnreachable => "ProviderUnreachable",
            Reason::Unauthorized => "Unauthorized",
            Reason::InvalidScope => "InvalidScope",
            Reason::RateLimited => "RateLimited",
            Reason::TokenRequestFailed => "TokenRequestFailed",
            Reason::InvalidTokenResponse => "InvalidTokenResponse",
            Reason::RefreshTokenRejected => "RefreshTokenRejected",
            Reason::LifetimeClamped => "LifetimeClamped",
            Reason::RefreshTokenExpiring => "RefreshTokenExpiring",
            Reason::ExpiryUnreadable => "ExpiryUnreadable",
            Reason::SecretWriteFailed => "SecretWriteFailed",
            Reason::TokenRevoked => "TokenRevoked",
            Reason::RevocationFailed => "RevocationFailed",
            Reason::RevocationPending => "RevocationPending",
            Reason::KubernetesAPI => "KubernetesAPI",
            Reason::InternalError => "InternalError",
        }
    }

    /// Whether waiting can cure it (the provider or the apiserver may recover). The others need
    /// a person to change the spec, the inputs or the cluster; they are still retried, at the
    /// longest backoff, and at once when the spec or inputs change.
    pub fn transient(self) -> bool {
        matches!(
            self,
            Reason::ProviderUnreachable
                | Reason::RateLimited
                | Reason::TokenRequestFailed
                | Reason::InvalidTokenResponse
                | Reason::UpstreamNotReady
                | Reason::SecretWriteFailed
                | Reason::RevocationPending
                | Reason::KubernetesAPI
                | Reason::InternalError
        )
    }

    /// Whether a provider that recovers cures it, so that without a valid token in place the
    /// backoff stays short (an outage, a 5xx, a garbled answer, a rate limit without
    /// Retry-After, an upstream credential not ready yet).
    pub fn outage(self) -> bool {
        matches!(
            self,
            Reason::ProviderUnreachable
                | Reason::TokenRequestFailed
                | Reason::InvalidTokenResponse
                | Reason::RateLimited
                | Reason::UpstreamNotReady
        )
    }

    /// The event action for this reason.
    pub fn action(self) -> &'static str {
        match self {
            Reason::TokenRevoked | Reason::RevocationFailed | Reason::RevocationPending => "Revoke",
            Reason::TokenIssued
            | Reason::TokenRenewed
            | Reason::TokenRestored
            | Reason::ExpiryUnreadable => "Refresh",
            _ => "RefreshFailed",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_variant_names() {
        for r in [
            Reason::TokenIssued,
            Reason::InputsNotFound,
            Reason::CABundleNotFound,
            Reason::InsecureURL,
            Reason::KubernetesAPI,
            Reason::InvalidScope,
            Reason::ExpiryUnreadable,
        ] {
            assert_eq!(r.as_str(), format!("{r:?}"));
        }
        assert!(Reason::ProviderUnreachable.transient());
        assert!(!Reason::InvalidSpec.transient());
        assert!(!Reason::InvalidScope.transient());
    }
}
