//! Images as local programs: the simulated kubelet's "test registry".
//!
//! No image is pulled or unpacked. A map from image repository (the reference without tag or
//! digest, e.g. `registry.local/mover/mover-agent`) to an [`Image`] says which local program is
//! the image's entrypoint and which directories make up its `PATH`. A container's `command` and
//! `args` are then taken as a container runtime takes them: `command[0]` is looked up by name in
//! the image (its entrypoint, then its `PATH`); an empty `command` runs the entrypoint with
//! `args`. An image marked [`Image::pulled`] is also checked against the real registry its
//! repository names before it runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::pods::StartError;

/// The `PATH` a container gets when its image sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One image of the test registry: a local program and the environment it runs in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    entrypoint: PathBuf,
    path: Vec<PathBuf>,
    env: Vec<(String, String)>,
    pulled: bool,
}

impl Image {
    /// An image whose only program is `entrypoint` (e.g. `target/debug/mover-agent`): a
    /// container runs it when its `command` is empty or names it (by file name or full path).
    #[must_use]
    pub fn program(entrypoint: impl Into<PathBuf>) -> Self {
        Image { entrypoint: entrypoint.into(), path: Vec::new(), env: Vec::new(), pulled: false }
    }

    /// A tools image (an "ansible runner", a shell): `entrypoint` runs when `command` is empty,
    /// and `command[0]` is otherwise looked up by name in `path`, which is also the container's
    /// `PATH`.
    #[must_use]
    pub fn tools(entrypoint: impl Into<PathBuf>, path: impl IntoIterator<Item = PathBuf>) -> Self {
        Image { entrypoint: entrypoint.into(), path: path.into_iter().collect(), env: Vec::new(), pulled: false }
    }

    /// A tools image made of this machine's programs, for hook Jobs (an "ansible runner"):
    /// `/bin/sh` is the entrypoint, `command[0]` is looked up on this process's `PATH` (so
    /// `ansible-playbook`, `sh`, `python3` resolve as they do here), and `HOME` is `/tmp` (the
    /// pod's own tmpfs, where tools such as Ansible keep their temporary files; Ansible's remote
    /// temporary directory, which it finds through the user's passwd entry, is set there too).
    #[must_use]
    pub fn host_tools() -> Self {
        let path = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>());
        let path = path.unwrap_or_else(|| std::env::split_paths(DEFAULT_PATH).collect());
        Image::tools("/bin/sh", path).with_env("HOME", "/tmp").with_env("ANSIBLE_REMOTE_TMP", "/tmp/.ansible/tmp")
    }

    /// Sets a variable of the image's environment (its `ENV`), e.g. `HOME`; a container's own
    /// `env` overrides it.
    #[must_use]
    pub fn with_env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The image's repository names a real registry (plain HTTP on loopback, e.g. a
    /// `docker-registry` the test pushed the image into): a container of it runs only when that
    /// registry holds the reference's manifest (see `pull.rs`).
    #[must_use]
    pub fn pulled(mut self) -> Self {
        self.pulled = true;
        self
    }

    /// The image's environment, `PATH` first.
    pub(crate) fn env(&self) -> Vec<(String, String)> {
        let path = if self.path.is_empty() {
            DEFAULT_PATH.to_owned()
        } else {
            std::env::join_paths(&self.path)
                .map_or_else(|_| DEFAULT_PATH.to_owned(), |p| p.to_string_lossy().into_owned())
        };
        let mut env = vec![("PATH".to_owned(), path)];
        env.extend(self.env.iter().cloned());
        env
    }

    /// The program that runs for a container with this `command` (`args` follow it) and the
    /// arguments it gets before `args`.
    pub(crate) fn resolve(&self, command: &[String]) -> Result<(PathBuf, Vec<String>), StartError> {
        let Some((first, rest)) = command.split_first() else {
            return Ok((self.entrypoint.clone(), Vec::new()));
        };
        let wanted = Path::new(first);
        let name = wanted.file_name().unwrap_or_default();
        let program = if wanted == self.entrypoint || Some(name) == self.entrypoint.file_name() {
            Some(self.entrypoint.clone())
        } else if name == wanted.as_os_str() {
            self.path.iter().map(|dir| dir.join(name)).find(|candidate| candidate.is_file())
        } else {
            None
        };
        let program = program.ok_or_else(|| StartError {
            reason: "RunContainerError".to_owned(),
            message: format!(
                "exec: \"{first}\": executable file not found in $PATH (the test image's entrypoint is {}{})",
                self.entrypoint.display(),
                if self.path.is_empty() { String::new() } else { format!(", its PATH {}", self.env()[0].1) }
            ),
        })?;
        Ok((program, rest.to_vec()))
    }
}

/// The repository of an image reference: without its `@digest` and `:tag`
/// (`registry.local:5000/mover/agent:1.0@sha256:…` → `registry.local:5000/mover/agent`).
#[must_use]
pub fn repository(reference: &str) -> &str {
    let without_digest = reference.split_once('@').map_or(reference, |(name, _)| name);
    let last_slash = without_digest.rfind('/').map_or(0, |at| at + 1);
    match without_digest[last_slash..].rfind(':') {
        Some(colon) => &without_digest[..last_slash + colon],
        None => without_digest,
    }
}

/// Looks up a container's image in the test registry, failing as a kubelet does
/// (`ErrImagePull`) when it is not there.
pub(crate) fn find<'a>(images: &'a BTreeMap<String, Image>, reference: Option<&str>) -> Result<&'a Image, StartError> {
    let Some(reference) = reference.filter(|r| !r.is_empty()) else {
        return Err(StartError {
            reason: "InvalidImageName".to_owned(),
            message: "the container names no image".to_owned(),
        });
    };
    let image = images.get(repository(reference)).ok_or_else(|| StartError {
        reason: "ErrImagePull".to_owned(),
        message: format!(
            "Failed to pull image \"{reference}\": image \"{}\" not found in the test registry (it holds: {})",
            repository(reference),
            images.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
        ),
    })?;
    if image.pulled {
        super::pull::check(reference)?;
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_drops_tag_and_digest_but_not_a_registry_port() {
        assert_eq!(repository("registry.local/mover/mover-agent"), "registry.local/mover/mover-agent");
        assert_eq!(repository("registry.local/mover/mover-agent:0.1.0"), "registry.local/mover/mover-agent");
        assert_eq!(repository("localhost:5000/agent@sha256:abcd"), "localhost:5000/agent");
        assert_eq!(repository("localhost:5000/agent:v1@sha256:abcd"), "localhost:5000/agent");
        assert_eq!(repository("busybox"), "busybox");
    }

    #[test]
    fn unknown_image_is_an_image_pull_error_naming_it() {
        let images = BTreeMap::from([("registry.local/a".to_owned(), Image::program("/bin/true"))]);
        let error = find(&images, Some("registry.local/b:1")).unwrap_err();
        assert_eq!(error.reason, "ErrImagePull");
        assert!(
            error.message.contains("image \"registry.local/b\" not found in the test registry"),
            "{}",
            error.message
        );
        assert!(find(&images, Some("registry.local/a:latest")).is_ok());
        assert_eq!(find(&images, None).unwrap_err().reason, "InvalidImageName");
    }

    #[test]
    fn command_names_the_entrypoint_or_a_program_on_the_image_path() {
        let agent = Image::program("/opt/build/mover-agent");
        let args = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(agent.resolve(&[]).unwrap(), (PathBuf::from("/opt/build/mover-agent"), vec![]));
        assert_eq!(
            agent.resolve(&args(&["mover-agent", "serve"])).unwrap(),
            (PathBuf::from("/opt/build/mover-agent"), args(&["serve"]))
        );
        assert_eq!(agent.resolve(&args(&["/usr/bin/mover-agent"])).unwrap().0, PathBuf::from("/opt/build/mover-agent"));
        assert_eq!(agent.resolve(&args(&["sh", "-c", "true"])).unwrap_err().reason, "RunContainerError");

        let tools = Image::tools("/bin/sh", [PathBuf::from("/usr/bin"), PathBuf::from("/bin")]);
        assert_eq!(tools.resolve(&args(&["true"])).unwrap().0, PathBuf::from("/usr/bin/true"));
        let missing = tools.resolve(&args(&["no-such-tool-here"])).unwrap_err();
        assert!(missing.message.contains("executable file not found"), "{}", missing.message);
        assert_eq!(tools.env()[0], ("PATH".to_owned(), "/usr/bin:/bin".to_owned()));
    }
}
