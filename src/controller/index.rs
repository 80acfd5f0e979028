//! Which ProviderCredentials depend on which Secret, by (namespace, Secret name): kept up to date
//! from the watch of credentials, so that a Secret event maps to the credentials it concerns by
//! one lookup instead of a scan of every credential (a relist of N Secrets would otherwise cost
//! N x credentials).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::Event;

use super::state;
use crate::crd::ProviderCredential;

/// (namespace, name)
type Key = (String, String);

/// The index of dependencies from Secrets to credentials. Shared by the controllers of every
/// watched namespace.
#[derive(Debug, Default)]
pub struct Dependents {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Secret -> names of the credentials (in its namespace) that depend on it.
    by_secret: HashMap<Key, BTreeSet<String>>,
    /// Credential -> the Secrets it depends on.
    by_credential: HashMap<Key, Vec<String>>,
    /// Credentials seen by a relist in progress, by the namespace it covers (`None`: all).
    relists: HashMap<Option<String>, HashSet<Key>>,
}

/// The Secrets `pc` depends on: its inputs, its output, its CA bundle Secret and the state
/// Secret of its upstream credential (where the upstream's token is kept).
pub fn secrets_of(pc: &ProviderCredential) -> Vec<String> {
    let mut names = vec![
        pc.spec.inputs.secret_name.clone(),
        pc.spec.output.secret_name.clone(),
    ];
    if let Some(ca) = pc
        .spec
        .tls
        .as_ref()
        .and_then(|t| t.ca_bundle_secret.as_ref())
    {
        names.push(ca.name.clone());
    }
    if let Some(up) = pc.spec.http.as_ref().and_then(|h| h.upstream.as_ref()) {
        names.push(state::name(&up.provider_credential));
    }
    names.sort();
    names.dedup();
    names
}

fn key(pc: &ProviderCredential) -> Key {
    (pc.namespace().unwrap_or_default(), pc.name_any())
}

impl Inner {
    /// Record `pc`'s dependencies; the upstream credentials it newly depends on are returned.
    fn set(&mut self, pc: &ProviderCredential) -> Vec<String> {
        let k = key(pc);
        let names = secrets_of(pc);
        let old = self.by_credential.get(&k).cloned().unwrap_or_default();
        if old == names {
            return Vec::new();
        }
        self.remove(&k);
        for name in &names {
            self.by_secret
                .entry((k.0.clone(), name.clone()))
                .or_default()
                .insert(k.1.clone());
        }
        let new_upstreams = names
            .iter()
            .filter(|n| !old.contains(n))
            .filter_map(|n| state::owner_name(n).map(str::to_string))
            .collect();
        self.by_credential.insert(k, names);
        new_upstreams
    }

    fn remove(&mut self, k: &Key) {
        for name in self.by_credential.remove(k).unwrap_or_default() {
            let sk = (k.0.clone(), name);
            if let Some(set) = self.by_secret.get_mut(&sk) {
                set.remove(&k.1);
                if set.is_empty() {
                    self.by_secret.remove(&sk);
                }
            }
        }
    }
}

impl Dependents {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // a panic while holding the lock leaves a consistent map (every update is one call)
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fold one event of the credentials' watch (covering `scope`: one namespace, or all) into
    /// the index. Returns the credentials that just became another's upstream: they must keep
    /// their token in their state Secret from now on, so they are reconciled at once.
    pub fn observe(
        &self,
        scope: Option<&str>,
        event: &Event<ProviderCredential>,
    ) -> Vec<ObjectRef<ProviderCredential>> {
        let mut inner = self.lock();
        match event {
            Event::Apply(pc) => {
                let ns = pc.namespace().unwrap_or_default();
                let names = inner.set(pc);
                names
                    .into_iter()
                    .map(|n| ObjectRef::new(&n).within(&ns))
                    .collect()
            }
            Event::Delete(pc) => {
                inner.remove(&key(pc));
                Vec::new()
            }
            Event::Init => {
                inner
                    .relists
                    .insert(scope.map(str::to_string), HashSet::new());
                Vec::new()
            }
            Event::InitApply(pc) => {
                if let Some(seen) = inner.relists.get_mut(&scope.map(str::to_string)) {
                    seen.insert(key(pc));
                }
                // a dependent created while the watch was down wakes its upstream too
                let ns = pc.namespace().unwrap_or_default();
                inner
                    .set(pc)
                    .into_iter()
                    .map(|n| ObjectRef::new(&n).within(&ns))
                    .collect()
            }
            Event::InitDone => {
                let seen = inner
                    .relists
                    .remove(&scope.map(str::to_string))
                    .unwrap_or_default();
                let gone: Vec<Key> = inner
                    .by_credential
                    .keys()
                    .filter(|k| scope.is_none_or(|ns| k.0 == ns) && !seen.contains(*k))
                    .cloned()
                    .collect();
                for k in gone {
                    inner.remove(&k);
                }
                Vec::new()
            }
        }
    }

    /// Whether a credential reads the Secret `name` in `namespace`: one it names, or its own
    /// state Secret.
    pub fn reads(&self, namespace: &str, name: &str) -> bool {
        let inner = self.lock();
        let key = |n: &str| (namespace.to_string(), n.to_string());
        inner.by_secret.contains_key(&key(name))
            || state::owner_name(name).is_some_and(|pc| inner.by_credential.contains_key(&key(pc)))
    }

    /// The credentials in `namespace` that depend on the Secret `name`.
    pub fn of(&self, namespace: &str, name: &str) -> Vec<ObjectRef<ProviderCredential>> {
        let inner = self.lock();
        inner
            .by_secret
            .get(&(namespace.to_string(), name.to_string()))
            .map(|set| {
                set.iter()
                    .map(|pc| ObjectRef::new(pc).within(namespace))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether any credential in `namespace` names `credential` as its upstream (and so reads
    /// its token from its state Secret).
    pub fn is_upstream(&self, namespace: &str, credential: &str) -> bool {
        let inner = self.lock();
        inner
            .by_secret
            .contains_key(&(namespace.to_string(), state::name(credential)))
    }

    /// Number of credentials indexed.
    pub fn credentials(&self) -> usize {
        self.lock().by_credential.len()
    }
}

/// The resourceVersion of each Secret as this controller last wrote it: the watch event of our
/// own write maps to nothing (the reconcile that wrote it knows it already and has planned its
/// next wake), so a renewal is not followed by a reconcile that reads everything again to find
/// nothing to do.
#[derive(Debug, Default)]
pub struct OwnWrites {
    inner: Mutex<HashMap<Key, String>>,
}

impl OwnWrites {
    pub fn wrote<K: kube::Resource>(&self, object: &K) {
        let meta = object.meta();
        if let (Some(ns), Some(name), Some(rv)) =
            (&meta.namespace, &meta.name, &meta.resource_version)
        {
            self.lock().insert((ns.clone(), name.clone()), rv.clone());
        }
    }

    /// Whether the event of `object` is our own write's (a deleted object never is).
    pub fn is_own<K: kube::Resource>(&self, object: &K) -> bool {
        let meta = object.meta();
        let key = (
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        );
        let mut map = self.lock();
        if meta.deletion_timestamp.is_some() {
            map.remove(&key);
            return false;
        }
        meta.resource_version
            .as_ref()
            .is_some_and(|rv| map.get(&key) == Some(rv))
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Key, String>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pc(ns: &str, name: &str, inputs: &str, upstream: Option<&str>) -> ProviderCredential {
        let http = match upstream {
            Some(up) => format!(
                "\n  http:\n    login: {{url: 'https://x.example/'}}\n    upstream: {{providerCredential: {up}}}"
            ),
            None => String::new(),
        };
        serde_saphyr::from_str(&format!(
            "apiVersion: tokensync.dev/v1alpha1\nkind: ProviderCredential\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  inputs: {{secretName: {inputs}}}\n  output: {{secretName: {name}-token}}{http}\n"
        ))
        .unwrap()
    }

    fn names(refs: Vec<ObjectRef<ProviderCredential>>) -> Vec<String> {
        refs.into_iter().map(|r| r.name).collect()
    }

    #[test]
    fn our_own_writes_are_told_apart() {
        let own = OwnWrites::default();
        let secret = |rv: &str| k8s_openapi::api::core::v1::Secret {
            metadata: kube::api::ObjectMeta {
                namespace: Some("a".into()),
                name: Some("x-token".into()),
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(!own.is_own(&secret("5")));
        own.wrote(&secret("5"));
        assert!(own.is_own(&secret("5")));
        // someone else's change after ours
        assert!(!own.is_own(&secret("6")));
    }

    #[test]
    fn secrets_map_to_their_credentials_by_lookup() {
        let d = Dependents::default();
        d.observe(None, &Event::Apply(pc("a", "one", "shared-in", None)));
        d.observe(None, &Event::Apply(pc("a", "two", "shared-in", None)));
        d.observe(None, &Event::Apply(pc("b", "one", "shared-in", None)));
        assert_eq!(names(d.of("a", "shared-in")), ["one", "two"]);
        assert_eq!(names(d.of("a", "two-token")), ["two"]);
        assert_eq!(names(d.of("b", "shared-in")), ["one"]);
        assert!(d.of("a", "unrelated").is_empty());
        // what the Secret cache keeps data of: named Secrets, and each credential's own state
        assert!(d.reads("a", "shared-in") && d.reads("a", "one-tokensync-state"));
        assert!(!d.reads("a", "unrelated") && !d.reads("a", "three-tokensync-state"));
        // a spec change moves the dependency
        d.observe(None, &Event::Apply(pc("a", "two", "own-in", None)));
        assert_eq!(names(d.of("a", "shared-in")), ["one"]);
        assert_eq!(names(d.of("a", "own-in")), ["two"]);
        d.observe(None, &Event::Delete(pc("a", "one", "shared-in", None)));
        assert!(d.of("a", "shared-in").is_empty());
        assert_eq!(d.credentials(), 2);
    }

    #[test]
    fn a_new_dependent_wakes_its_upstream_once() {
        let d = Dependents::default();
        d.observe(None, &Event::Apply(pc("a", "oidc", "in", None)));
        assert!(!d.is_upstream("a", "oidc"));
        let woken = d.observe(None, &Event::Apply(pc("a", "pat", "in", Some("oidc"))));
        assert_eq!(names(woken), ["oidc"]);
        assert!(d.is_upstream("a", "oidc"));
        assert_eq!(names(d.of("a", "oidc-tokensync-state")), ["pat"]);
        // the same spec again wakes nobody
        let woken = d.observe(None, &Event::Apply(pc("a", "pat", "in", Some("oidc"))));
        assert!(woken.is_empty());
        d.observe(None, &Event::Delete(pc("a", "pat", "in", Some("oidc"))));
        assert!(!d.is_upstream("a", "oidc"));
    }

    #[test]
    fn a_relist_drops_what_it_did_not_see_in_its_scope_only() {
        let d = Dependents::default();
        d.observe(Some("a"), &Event::Apply(pc("a", "gone", "in-1", None)));
        d.observe(Some("a"), &Event::Apply(pc("a", "kept", "in-2", None)));
        d.observe(Some("b"), &Event::Apply(pc("b", "other", "in-1", None)));
        d.observe(Some("a"), &Event::Init);
        d.observe(Some("a"), &Event::InitApply(pc("a", "kept", "in-2", None)));
        // a dependent created while the watch was down wakes its upstream
        let woken = d.observe(
            Some("a"),
            &Event::InitApply(pc("a", "late", "in-3", Some("kept"))),
        );
        assert_eq!(names(woken), ["kept"]);
        d.observe(Some("a"), &Event::InitDone);
        assert!(d.of("a", "in-1").is_empty());
        assert_eq!(names(d.of("a", "in-2")), ["kept"]);
        assert_eq!(names(d.of("b", "in-1")), ["other"]);
    }
}
