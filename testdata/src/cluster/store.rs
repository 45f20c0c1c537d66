//! The object store: every object as JSON, one cluster-wide `resourceVersion` counter (as etcd's
//! revision), and the history of changes that watches replay. A watch from a version older than
//! the history holds gets 410 Expired, as from the real watch cache.

use std::collections::{BTreeMap, VecDeque};

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::resources::{self, ResourceType};

/// How many changes the store remembers for watches (the real watch cache keeps a window too).
const HISTORY: usize = 10_000;

/// ADDED, MODIFIED or DELETED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A new object.
    Added,
    /// A changed object.
    Modified,
    /// A removed object (carrying its last state, with the deletion's `resourceVersion`).
    Deleted,
}

impl Change {
    /// The watch event `type`.
    pub fn name(self) -> &'static str {
        match self {
            Change::Added => "ADDED",
            Change::Modified => "MODIFIED",
            Change::Deleted => "DELETED",
        }
    }
}

/// One remembered change.
#[derive(Debug, Clone)]
pub struct Event {
    /// The `resourceVersion` the change produced.
    pub rv: u64,
    /// The kind of the object.
    pub kind: &'static str,
    /// What happened.
    pub change: Change,
    /// The object after the change.
    pub object: Value,
    /// The object before the change (for MODIFIED), so a filtered watch can tell an object that
    /// started or stopped matching.
    pub previous: Option<Value>,
}

type Key = (&'static str, String, String);

/// Objects, the version counter and the change history.
#[derive(Default)]
pub struct Store {
    objects: BTreeMap<Key, Value>,
    rv: u64,
    history: VecDeque<Event>,
    /// Every change after this version is in `history`.
    horizon: u64,
    uids: u64,
}

/// The current time as the API shows it (`2026-01-02T03:04:05Z`).
pub fn now() -> String {
    Timestamp::from_second(now_seconds()).unwrap_or(Timestamp::UNIX_EPOCH).to_string()
}

/// Seconds since the epoch.
pub fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `metadata.name` of an object.
pub fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or("")
}

/// `metadata.namespace` of an object (`""` when cluster-scoped).
pub fn namespace_of(object: &Value) -> &str {
    object["metadata"]["namespace"].as_str().unwrap_or("")
}

/// `metadata.resourceVersion` of an object, as a number.
pub fn rv_of(object: &Value) -> Option<u64> {
    object["metadata"]["resourceVersion"].as_str().and_then(|v| v.parse().ok())
}

fn key(resource: &ResourceType, namespace: &str, name: &str) -> Key {
    (resource.kind, namespace.to_owned(), name.to_owned())
}

impl Store {
    /// The latest `resourceVersion`.
    pub fn version(&self) -> u64 {
        self.rv
    }

    /// A new unique object uid.
    pub fn uid(&mut self) -> String {
        self.uids += 1;
        let n = self.uids;
        let time =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            time as u32,
            n & 0xffff,
            (time >> 32) & 0xfff,
            n >> 16 & 0xfff,
            n
        )
    }

    /// One object.
    pub fn get(&self, resource: &ResourceType, namespace: &str, name: &str) -> Option<&Value> {
        self.objects.get(&key(resource, namespace, name))
    }

    /// Every object of a type, in one namespace or (`None`) all.
    pub fn list(&self, resource: &ResourceType, namespace: Option<&str>) -> Vec<&Value> {
        self.objects
            .iter()
            .filter(|((kind, ns, _), _)| *kind == resource.kind && namespace.is_none_or(|want| want == ns))
            .map(|(_, object)| object)
            .collect()
    }

    /// Every object of every type in a namespace, with its type.
    pub fn in_namespace(&self, namespace: &str) -> Vec<(&'static ResourceType, Value)> {
        self.objects
            .iter()
            .filter(|((_, ns, _), _)| ns == namespace)
            .map(|((kind, _, _), object)| (resources::by_kind(kind), object.clone()))
            .collect()
    }

    /// Every object of every type, with its type (for the garbage collector).
    pub fn all(&self) -> Vec<(&'static ResourceType, Value)> {
        self.objects.iter().map(|((kind, _, _), object)| (resources::by_kind(kind), object.clone())).collect()
    }

    fn record(&mut self, kind: &'static str, change: Change, object: Value, previous: Option<Value>) {
        self.history.push_back(Event { rv: self.rv, kind, change, object, previous });
        while self.history.len() > HISTORY {
            if let Some(event) = self.history.pop_front() {
                self.horizon = event.rv;
            }
        }
    }

    /// Stores an object under a new `resourceVersion` (adding or replacing it) and records the
    /// change. Returns the stored object.
    pub fn put(&mut self, resource: &'static ResourceType, mut object: Value) -> Value {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let key = key(resource, namespace_of(&object), name_of(&object));
        let previous = self.objects.insert(key, object.clone());
        let change = if previous.is_some() { Change::Modified } else { Change::Added };
        self.record(resource.kind, change, object.clone(), previous);
        object
    }

    /// Like [`Store::put`] for an existing object, but only when `object` differs from what is
    /// stored (controllers call it every round).
    pub fn put_if_changed(&mut self, resource: &'static ResourceType, object: Value) -> Value {
        let mut bare = object.clone();
        if let Some(current) = self.get(resource, namespace_of(&object), name_of(&object)) {
            bare["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
            if *current == bare {
                return bare;
            }
        }
        self.put(resource, object)
    }

    /// Removes an object, recording DELETED with a new version.
    pub fn remove(&mut self, resource: &'static ResourceType, namespace: &str, name: &str) -> Option<Value> {
        let mut object = self.objects.remove(&key(resource, namespace, name))?;
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.record(resource.kind, Change::Deleted, object.clone(), None);
        Some(object)
    }

    /// The changes to `kind` after version `since`, or `Err(horizon)` when some of them are no
    /// longer remembered.
    pub fn changes_since(&self, kind: &str, since: u64) -> Result<Vec<Event>, u64> {
        if since < self.horizon {
            return Err(self.horizon);
        }
        Ok(self.history.iter().filter(|e| e.rv > since && e.kind == kind).cloned().collect())
    }

    /// Forgets the change history, so every watch from an older version gets 410 Expired (as
    /// after an etcd compaction).
    pub fn compact(&mut self) {
        self.history.clear();
        self.horizon = self.rv;
    }
}
