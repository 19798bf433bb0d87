//! A real HTTP server that speaks the part of the Kubernetes API the agent uses: list and watch
//! of pods (honouring `fieldSelector=spec.nodeName=…`) and namespaces, with resource versions
//! and streamed watch events, and the creation of Events (`events.k8s.io/v1`), kept for the
//! test to read. The agent's unchanged kube-rs client talks to it over loopback.
use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use futures::StreamExt as _;
use http_body_util::{BodyExt, StreamBody, combinators::UnsyncBoxBody};
use hyper::{
    Request, Response,
    body::{Bytes, Frame},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::mpsc;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Pods,
    Namespaces,
}

struct Watcher {
    kind: Kind,
    node: Option<String>,
    tx: mpsc::UnboundedSender<Bytes>,
}

#[derive(Default)]
struct State {
    version: u64,
    pods: BTreeMap<String, Value>,
    namespaces: BTreeMap<String, Value>,
    watchers: Vec<Watcher>,
    requests: Vec<String>,
    /// Events created, as posted.
    events: Vec<Value>,
    /// Serve every pod whatever `fieldSelector` asks: a server (or proxy) the agent must not
    /// trust to filter by node.
    ignore_field_selectors: bool,
}

fn node_of(pod: &Value) -> Option<&str> {
    pod["spec"]["nodeName"].as_str()
}

impl State {
    fn stamp(&mut self, obj: &mut Value) {
        self.version += 1;
        obj["metadata"]["resourceVersion"] = json!(self.version.to_string());
    }

    fn notify(&mut self, kind: Kind, kind_of_event: &str, obj: &Value) {
        let line = Bytes::from(format!("{}\n", json!({ "type": kind_of_event, "object": obj })));
        self.watchers.retain(|w| {
            if w.kind != kind || (kind == Kind::Pods && w.node.is_some() && w.node.as_deref() != node_of(obj)) {
                return !w.tx.is_closed();
            }
            w.tx.send(line.clone()).is_ok()
        });
    }
}

pub struct FakeApi {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

fn full(status: u16, v: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(Bytes::from(v.to_string())).boxed_unsync())
        .unwrap()
}

fn handle(state: &Arc<Mutex<State>>, req: &Request<hyper::body::Incoming>) -> Response<Body> {
    let uri = req.uri();
    let query: BTreeMap<String, String> =
        form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()).into_owned().collect();
    let mut st = state.lock().unwrap();
    st.requests.push(format!("{} {}", uri.path(), uri.query().unwrap_or("")));
    let (kind, list_kind) = match uri.path() {
        "/api/v1/pods" => (Kind::Pods, "PodList"),
        "/api/v1/namespaces" => (Kind::Namespaces, "NamespaceList"),
        other => {
            return full(
                404,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": format!("{other} is not served"), "reason": "NotFound", "code": 404}),
            );
        }
    };
    let node = query
        .get("fieldSelector")
        .and_then(|f| f.strip_prefix("spec.nodeName="))
        .map(str::to_owned)
        .filter(|_| !st.ignore_field_selectors);
    let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    if watch {
        let (tx, rx) = mpsc::unbounded_channel();
        st.watchers.push(Watcher { kind, node, tx });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        return Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(BodyExt::boxed_unsync(StreamBody::new(stream.boxed())))
            .unwrap();
    }
    let items: Vec<Value> = match kind {
        Kind::Pods => st.pods.values().filter(|p| node.is_none() || node.as_deref() == node_of(p)).cloned().collect(),
        Kind::Namespaces => st.namespaces.values().cloned().collect(),
    };
    full(
        200,
        json!({"kind": list_kind, "apiVersion": "v1", "metadata": {"resourceVersion": st.version.to_string()}, "items": items}),
    )
}

/// `POST /apis/events.k8s.io/v1/namespaces/NS/events`: kept, and returned as created.
async fn create(state: &Arc<Mutex<State>>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let namespace = path
        .strip_prefix("/apis/events.k8s.io/v1/namespaces/")
        .and_then(|rest| rest.strip_suffix("/events"))
        .map(str::to_owned);
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let mut st = state.lock().unwrap();
    st.requests.push(format!("POST {path}"));
    let Some(namespace) = namespace else {
        return full(405, json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 405}));
    };
    let Ok(mut event) = serde_json::from_slice::<Value>(&body) else {
        return full(400, json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 400}));
    };
    if event["metadata"]["namespace"].as_str() != Some(namespace.as_str()) {
        return full(
            422,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "namespace does not match", "code": 422}),
        );
    }
    st.stamp(&mut event);
    st.events.push(event.clone());
    full(201, event)
}

impl FakeApi {
    /// Serves on a loopback port from a thread of its own.
    pub fn start() -> Self {
        Self::start_on("127.0.0.1")
    }

    /// Serves on a port of `ip` (an address of this host) from a thread of its own.
    pub fn start_on(ip: &str) -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = state.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let state = shared.clone();
                    tokio::spawn(async move {
                        let svc = service_fn(move |req| {
                            let state = state.clone();
                            async move {
                                let resp = if req.method() == hyper::Method::POST {
                                    create(&state, req).await
                                } else {
                                    handle(&state, &req)
                                };
                                Ok::<_, Infallible>(resp)
                            }
                        });
                        let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                    });
                }
            });
        });
        Self { addr, state }
    }

    /// A kubeconfig pointing the client at this server.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\nusers:\n- name: agent\n  user:\n    token: test-token\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: agent\ncurrent-context: fake\n",
            self.addr
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Adds or replaces a pod; `ADDED`/`MODIFIED` goes to the watchers of its node.
    pub fn put_pod(&self, mut pod: Value) {
        let mut st = self.state.lock().unwrap();
        st.stamp(&mut pod);
        let uid = pod["metadata"]["uid"].as_str().unwrap().to_owned();
        let event = if st.pods.contains_key(&uid) { "MODIFIED" } else { "ADDED" };
        st.pods.insert(uid, pod.clone());
        st.notify(Kind::Pods, event, &pod);
    }

    pub fn delete_pod(&self, uid: &str) {
        let mut st = self.state.lock().unwrap();
        let Some(mut pod) = st.pods.remove(uid) else { panic!("no pod {uid}") };
        st.stamp(&mut pod);
        st.notify(Kind::Pods, "DELETED", &pod);
    }

    /// From now on, list and watch every pod whatever the field selector says.
    pub fn ignore_field_selectors(&self) {
        self.state.lock().unwrap().ignore_field_selectors = true;
    }

    pub fn put_namespace(&self, name: &str, labels: Value) {
        let mut st = self.state.lock().unwrap();
        let mut ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}});
        st.stamp(&mut ns);
        let event = if st.namespaces.contains_key(name) { "MODIFIED" } else { "ADDED" };
        st.namespaces.insert(name.to_owned(), ns.clone());
        st.notify(Kind::Namespaces, event, &ns);
    }

    /// Every Event created so far.
    pub fn events(&self) -> Vec<Value> {
        self.state.lock().unwrap().events.clone()
    }

    /// `path query` of every request so far.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }
}

/// A pod as the API returns it.
pub fn pod(namespace: &str, name: &str, uid: &str, node: &str, qos: &str, annotation: Option<&str>) -> Value {
    let annotations = match annotation {
        Some(v) => json!({ "mptcpify.io/enabled": v }),
        None => json!({}),
    };
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "namespace": namespace, "uid": uid, "annotations": annotations },
        "spec": { "nodeName": node, "containers": [{ "name": "app", "image": "example/app" }] },
        "status": { "phase": "Running", "qosClass": qos }
    })
}
