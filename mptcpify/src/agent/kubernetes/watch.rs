//! Watches this node's pods and every namespace's selection label through the API server
//! (kube-rs watchers: list, then watch, with backoff and re-list on errors) into a [`Cluster`]
//! the reconciler reads.
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{
    Api, Client, ResourceExt as _,
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::sync::mpsc;

use super::pods::{PodInfo, PodRefused, SELECT_KEY};

/// What the watchers know of the cluster.
#[derive(Debug, Default)]
pub struct Cluster {
    /// This node's name.
    pub node: String,
    /// This node's pods by UID.
    pub pods: BTreeMap<String, Listed>,
    /// Every namespace's `mptcpify.io/enabled` label.
    pub namespaces: BTreeMap<String, Option<String>>,
    /// Both initial lists arrived: until then an absent pod may just not be listed yet.
    pub pods_listed: bool,
    pub namespaces_listed: bool,
}

impl Cluster {
    pub fn synced(&self) -> bool {
        self.pods_listed && self.namespaces_listed
    }
}

pub type Shared = Arc<Mutex<Cluster>>;

/// A listed pod, or why it is never enabled (its `namespace/name`, escaped, and the reason).
pub type Listed = Result<PodInfo, (String, PodRefused)>;

pub async fn client() -> Result<Client> {
    let config = kube::Config::infer()
        .await
        .context("finding the Kubernetes API (in-cluster service account, or KUBECONFIG)")?;
    Client::try_from(config).context("creating the Kubernetes client")
}

/// Runs both watchers until the process ends; every change pokes `changed`.
pub async fn run(client: Client, node: String, cluster: Shared, changed: mpsc::UnboundedSender<()>) {
    let pods: Api<Pod> = Api::all(client.clone());
    let namespaces: Api<Namespace> = Api::all(client);
    let pod_cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let pod_stream = watcher(pods, pod_cfg).default_backoff().map_ok(|e| Change::Pod(Box::new(e))).boxed();
    let ns_stream = watcher(namespaces, watcher::Config::default())
        .default_backoff()
        .map_ok(|e| Change::Namespace(Box::new(e)))
        .boxed();
    let mut all = futures::stream::select(pod_stream, ns_stream);
    let mut pending_pods = BTreeMap::new();
    let mut pending_ns = BTreeMap::new();
    while let Some(change) = all.next().await {
        let change = match change {
            Ok(c) => c,
            Err(e) => {
                log::warn!("kubernetes watch: {e} (retrying)");
                continue;
            }
        };
        let mut guard = cluster.lock().expect("cluster lock");
        let c = &mut *guard;
        match change {
            Change::Pod(event) => apply(*event, &mut c.pods, &mut pending_pods, pod_entry, &mut c.pods_listed),
            Change::Namespace(event) => {
                apply(*event, &mut c.namespaces, &mut pending_ns, ns_entry, &mut c.namespaces_listed)
            }
        }
        drop(guard);
        let _ = changed.send(());
    }
}

enum Change {
    // Boxed: the objects are hundreds of bytes, and only a pointer moves through the stream.
    Pod(Box<watcher::Event<Pod>>),
    Namespace(Box<watcher::Event<Namespace>>),
}

fn pod_entry(p: &Pod) -> Option<(String, Listed)> {
    let name = || format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()).escape_debug().to_string();
    Some((p.metadata.uid.clone()?, PodInfo::from_pod(p).map_err(|reason| (name(), reason))))
}

fn ns_entry(n: &Namespace) -> Option<(String, Option<String>)> {
    Some((n.name_any(), n.labels().get(SELECT_KEY).cloned()))
}

/// Folds one watcher event into `map`; a re-list is buffered and swapped in whole at its end.
fn apply<K, V>(
    event: watcher::Event<K>,
    map: &mut BTreeMap<String, V>,
    pending: &mut BTreeMap<String, V>,
    entry: fn(&K) -> Option<(String, V)>,
    listed: &mut bool,
) {
    match event {
        watcher::Event::Apply(o) => map.extend(entry(&o)),
        watcher::Event::Delete(o) => {
            if let Some((k, _)) = entry(&o) {
                map.remove(&k);
            }
        }
        watcher::Event::Init => pending.clear(),
        watcher::Event::InitApply(o) => pending.extend(entry(&o)),
        watcher::Event::InitDone => {
            *map = std::mem::take(pending);
            *listed = true;
        }
    }
}
