//! `mover k8s manifests`: the objects mover's install needs, rendered from mover-kube's
//! builders, so what is printed is what the code creates.

use std::io::Write;

use anyhow::Context;
use mover_kube::manifests;
use mover_kube::objects::{Install, Strategy, install_objects, template_objects};

use crate::Outcome;
use crate::args::{K8sCommand, K8sManifestsArgs, StrategyArg};

/// Says what the templates are, so that nobody applies them.
const TEMPLATES_HEADER: &str = "\
# Examples of what mover creates per migration and claim (not for `kubectl apply`): the
# migration's identity Secret, a source transfer pod pinned to its claim's node, a target
# transfer pod and the Service exposing it.
";

/// Runs `mover k8s ...`.
pub fn run(command: &K8sCommand) -> anyhow::Result<Outcome> {
    match command {
        K8sCommand::Manifests(args) => manifests(args),
    }
}

fn manifests(args: &K8sManifestsArgs) -> anyhow::Result<Outcome> {
    let install = Install {
        strategy: match args.strategy {
            StrategyArg::Pod => Strategy::Pod,
            StrategyArg::Node => Strategy::Node,
        },
        namespace: &args.namespace,
        image: &args.image,
        kubelet_root: &args.kubelet_root,
    };
    let (header, objects) = if args.show_templates {
        (TEMPLATES_HEADER, template_objects(&install))
    } else {
        ("", install_objects(&install))
    };
    let yaml = manifests::to_yaml(&objects).context("while rendering the manifests as YAML")?;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(header.as_bytes()).and_then(|()| stdout.write_all(yaml.as_bytes())) {
        // `mover k8s manifests | head`: a closed stdout is the reader's choice, not a failure.
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(error).context("while writing the manifests")
        }
        _ => Ok(Outcome::Success),
    }
}
