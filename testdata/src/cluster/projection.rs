//! Secret and `ConfigMap` volumes as a real kubelet's atomic writer lays them out, kept in step
//! with their object while the pod runs.
//!
//! The files are written in a fresh `<dir>/..<timestamp>/`; `<dir>/..data` is a symlink to it,
//! and each top-level name `<dir>/<name>` a symlink to `..data/<name>`. A new version is written
//! in a new timestamped directory, then `..data` is replaced at once (a symlink made under a
//! temporary name, renamed over `..data`), so a reader sees the old files or the new ones, never
//! a mix; then the old directory is removed.
//!
//! As a real kubelet: an `optional` source that is deleted leaves the volume without keys; a
//! non-optional one that is deleted keeps its last content (the kubelet logs an error). Unlike a
//! real kubelet, a change reaches the volume within a controller round (a real one takes up to
//! its sync period plus the cache's TTL, about a minute).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use serde_json::Value;

use super::resources;
use super::store::Store;

/// `..data`: the symlink to the current timestamped directory.
const DATA: &str = "..data";

/// One file of a projected volume: its path in the volume, content and mode.
type File = (String, Vec<u8>, u32);

/// A Secret or `ConfigMap` volume of a running pod.
#[derive(Debug)]
pub struct Projection {
    dir: PathBuf,
    /// The volume's `secret` or `configMap` source.
    source: Value,
    kind: &'static str,
    namespace: String,
    object: String,
    /// The `resourceVersion` last written, `None` while the object is missing.
    version: Option<String>,
}

/// Why a projected volume cannot be set up: the event's message.
pub struct MountError(pub String);

impl Projection {
    /// The Secret or `ConfigMap` volume `volume` of a pod in `namespace`, to be kept in `dir`;
    /// `None` for a volume of another kind.
    pub fn of(volume: &Value, namespace: &str, dir: PathBuf) -> Option<Projection> {
        let (source, kind, field) = if let Some(secret) = volume.get("secret") {
            (secret, "Secret", "secretName")
        } else {
            (volume.get("configMap")?, "ConfigMap", "name")
        };
        Some(Projection {
            dir,
            object: source[field].as_str().unwrap_or("").to_owned(),
            source: source.clone(),
            kind,
            namespace: namespace.to_owned(),
            version: None,
        })
    }

    /// Writes the volume for the first time: a missing object that is not optional is an error.
    pub fn set_up(&mut self, store: &Store) -> Result<(), MountError> {
        let object = store.get(resources::by_kind(self.kind), &self.namespace, &self.object);
        if object.is_none() && self.source["optional"] != true {
            return Err(MountError(format!("{} \"{}\" not found", self.kind.to_lowercase(), self.object)));
        }
        self.version = None;
        self.write(object).map_err(|e| MountError(format!("writing {}: {e}", self.dir.display())))
    }

    /// Rewrites the volume if its object changed since the last write.
    pub fn refresh(&mut self, store: &Store) -> io::Result<()> {
        let object = store.get(resources::by_kind(self.kind), &self.namespace, &self.object);
        let version = object.and_then(|o| o["metadata"]["resourceVersion"].as_str());
        if version == self.version.as_deref() || (object.is_none() && self.source["optional"] != true) {
            return Ok(());
        }
        self.write(object)
    }

    fn write(&mut self, object: Option<&Value>) -> io::Result<()> {
        let files = object.map(|o| projected(&self.source, o, self.kind == "Secret")).unwrap_or_default();
        write_atomically(&self.dir, &files)?;
        self.version = object.and_then(|o| o["metadata"]["resourceVersion"].as_str()).map(str::to_owned);
        Ok(())
    }
}

/// A Secret's or `ConfigMap`'s keys as (path, content, mode), honouring `items` and modes.
fn projected(source: &Value, object: &Value, base64_data: bool) -> Vec<File> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut data: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (key, value) in object["data"].as_object().into_iter().flatten() {
        let text = value.as_str().unwrap_or("");
        let bytes = if base64_data { b64.decode(text).unwrap_or_default() } else { text.as_bytes().to_vec() };
        data.insert(key.clone(), bytes);
    }
    for (key, value) in object["binaryData"].as_object().into_iter().flatten() {
        data.insert(key.clone(), b64.decode(value.as_str().unwrap_or("")).unwrap_or_default());
    }
    let mode = source["defaultMode"].as_u64().and_then(|m| u32::try_from(m).ok()).unwrap_or(0o644);
    let files: Vec<File> = match source["items"].as_array() {
        Some(items) => items
            .iter()
            .filter_map(|item| {
                let content = data.get(item["key"].as_str()?)?.clone();
                let item_mode = item["mode"].as_u64().and_then(|m| u32::try_from(m).ok()).unwrap_or(mode);
                Some((item["path"].as_str()?.to_owned(), content, item_mode))
            })
            .collect(),
        None => data.into_iter().map(|(key, content)| (key, content, mode)).collect(),
    };
    // A path the API server would refuse (absolute, `..`, or starting with `..`) is left out.
    files.into_iter().filter(|(path, ..)| is_plain(path)).collect()
}

/// A relative path without `.`/`..` components whose first component does not start with `..`.
fn is_plain(path: &str) -> bool {
    !path.starts_with("..") && Path::new(path).components().all(|c| matches!(c, Component::Normal(_)))
}

/// A name for a new timestamped directory, unique within this process.
fn timestamped() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("..{}.{:09}_{}", now.as_secs(), now.subsec_nanos(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// The atomic writer: `files` in a new timestamped directory, `..data` swapped to it, the
/// top-level symlinks made (and those of keys that went away removed), the old directory removed.
fn write_atomically(dir: &Path, files: &[File]) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let stamp = timestamped();
    let fresh = dir.join(&stamp);
    fs::create_dir(&fresh)?;
    fs::set_permissions(&fresh, fs::Permissions::from_mode(0o755))?;
    for (path, content, mode) in files {
        let file = fresh.join(path);
        if let Some(parent) = file.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&file, content)?;
        fs::set_permissions(&file, fs::Permissions::from_mode(*mode))?;
    }
    let old = fs::read_link(dir.join(DATA)).ok();
    let temporary = dir.join(format!("..data_tmp{stamp}"));
    symlink(&stamp, &temporary)?;
    fs::rename(&temporary, dir.join(DATA))?;
    let names: BTreeSet<String> =
        files.iter().filter_map(|(path, ..)| path.split('/').next().map(str::to_owned)).collect();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !names.contains(&name) {
            fs::remove_file(dir.join(&name))?;
        }
    }
    for name in &names {
        let link = dir.join(name);
        if fs::symlink_metadata(&link).is_err() {
            symlink(Path::new(DATA).join(name), &link)?;
        }
    }
    if let Some(old) = old.filter(|old| *old != Path::new(&stamp)) {
        fs::remove_dir_all(dir.join(old))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(dir: &Path, name: &str) -> String {
        fs::read_to_string(dir.join(name)).unwrap()
    }

    #[test]
    fn the_atomic_writer_swaps_data_and_keeps_only_current_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("volume");
        let file = |path: &str, text: &str, mode| (path.to_owned(), text.as_bytes().to_vec(), mode);
        write_atomically(&dir, &[file("a", "1", 0o400), file("sub/b", "2", 0o644)]).unwrap();
        let first = fs::read_link(dir.join(DATA)).unwrap();
        assert_eq!(fs::read_link(dir.join("a")).unwrap(), Path::new("..data/a"));
        assert_eq!(fs::read_link(dir.join("sub")).unwrap(), Path::new("..data/sub"));
        assert_eq!((read(&dir, "a"), read(&dir, "sub/b")), ("1".to_owned(), "2".to_owned()));
        assert_eq!(fs::metadata(dir.join("a")).unwrap().permissions().mode() & 0o777, 0o400);

        write_atomically(&dir, &[file("a", "3", 0o400), file("c", "4", 0o600)]).unwrap();
        assert_ne!(fs::read_link(dir.join(DATA)).unwrap(), first);
        assert!(!dir.join(&first).exists(), "the old timestamped directory is removed");
        assert!(fs::symlink_metadata(dir.join("sub")).is_err(), "a key that went away is gone");
        assert_eq!((read(&dir, "a"), read(&dir, "c")), ("3".to_owned(), "4".to_owned()));

        write_atomically(&dir, &[]).unwrap();
        let left: Vec<String> =
            fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(left.len(), 2, "only ..data and its directory: {left:?}");
        assert!(left.iter().all(|name| name.starts_with("..")));
    }

    #[test]
    fn items_modes_and_unsafe_paths() {
        let secret = serde_json::json!({"data": {"k": "dg==", "x": "eA=="}});
        let source = serde_json::json!({"defaultMode": 0o440, "items": [
            {"key": "k", "path": "dir/k"}, {"key": "x", "path": "x", "mode": 0o400},
            {"key": "k", "path": "../escape"}, {"key": "k", "path": "..data"}]});
        let files = projected(&source, &secret, true);
        assert_eq!(files, vec![("dir/k".to_owned(), b"v".to_vec(), 0o440), ("x".to_owned(), b"x".to_vec(), 0o400)]);
    }
}
