//! `mover-testdata`: generate a test tree or compare two trees from the command line (for the
//! demo and benchmark scripts).
//!
//! ```text
//! mover-testdata generate DIR [--entries N] [--max-file-size SIZE] [--big KIND:SIZE]... [--plain] [--seed N]
//! mover-testdata compare A B [--no-ownership] [--no-allocation]
//! mover-testdata image DIR [--layers N] [--layer-size SIZE] [--platforms 1|2] [--tag TAG]
//!                          [--platform-layer-size SIZE] [--seed N] [--docker]
//! mover-testdata delay-relay LISTEN UPSTREAM MILLIS
//! mover-testdata cluster up DIR [--with-app]
//! mover-testdata cluster check-app DIR
//! mover-testdata cluster workloads DIR [--context source|target]
//! mover-testdata cluster apply DIR [--context source|target] < MANIFESTS
//! mover-testdata cluster down DIR
//! ```
//! `cluster up` starts two simulated clusters (`mover_testdata::cluster`), writes
//! `DIR/kubeconfig` with contexts `source` and `target`, and serves until SIGTERM or SIGINT (or
//! `cluster down DIR`). Their pods run as processes in namespaces of their own: root only. Pods
//! of `ghcr.io/mover-dev/mover-agent` run the `mover-agent` beside this program. `--with-app`
//! deploys a small application into the source cluster (`mover_testdata::cluster::app`: three
//! claims in namespaces `shop` and `shop-db`, one mounted by the Deployment `shop/web`, one by
//! the CronJob `shop/thumbnails`); `check-app` compares
//! each of its claims with the claim of the same name in the target cluster. `workloads` prints
//! the application's namespaces in one cluster (`source` unless `--context` says otherwise), one
//! line per object: workloads with the field quiesce changes and mover's annotations, pods
//! running, claims (`mover_testdata::cluster::inspect`). `apply` creates the objects of the YAML
//! documents on its standard input in one cluster (`source` unless `--context` says otherwise),
//! as the cluster's administrator: `mover k8s manifests | mover-testdata cluster apply DIR` is the
//! install `kubectl apply -f -` makes on a real cluster (an object that exists is an error).
//! `delay-relay` relays TCP connections from LISTEN to UPSTREAM, holding every byte MILLIS in each
//! direction (a long link on loopback; see `mover_testdata::delay`), until killed.
//! KIND is `random`, `text`, `database` or `sparse`; SIZE takes a `K`, `M` or `G` suffix.
//!
//! `image` writes an OCI image layout into DIR (created; it must be empty if it exists): N random
//! gzip layers of SIZE (default 4 of 16M) shared by all platforms. With `--platforms 1` (default)
//! one linux/amd64 image tagged TAG (default `latest`); with 2, images for linux/amd64 and
//! linux/arm64 (tagged `TAG-amd64`, `TAG-arm64`) and an index over both tagged TAG. With
//! `--platform-layer-size`, each image also gets one layer of its own of that size. `--docker`
//! writes Docker schema 2 manifests and a manifest list instead of OCI ones. The same arguments
//! always give the same digests.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use mover_testdata::delay::DelayRelay;
use mover_testdata::oci::{DOCKER_LAYER_GZIP, Descriptor, LayoutBuilder, OCI_LAYER_GZIP};
use mover_testdata::{BigFile, CompareOptions, TreeSpec};

fn size(text: &str) -> Result<u64, String> {
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, ""),
    };
    let number: u64 = digits.parse().map_err(|_| format!("bad size `{text}`"))?;
    let factor = match unit {
        "" => 1,
        "K" | "k" => 1 << 10,
        "M" | "m" => 1 << 20,
        "G" | "g" => 1 << 30,
        _ => return Err(format!("bad size unit in `{text}`")),
    };
    Ok(number * factor)
}

fn big(text: &str) -> Result<BigFile, String> {
    let (kind, bytes) = text.split_once(':').ok_or_else(|| format!("`--big {text}`: expected KIND:SIZE"))?;
    let bytes = size(bytes)?;
    Ok(match kind {
        "random" => BigFile::Random(bytes),
        "text" => BigFile::Text(bytes),
        "database" => BigFile::Database(bytes),
        "sparse" => BigFile::Sparse { size: bytes, data_every: 16 << 20, data_len: 256 << 10 },
        _ => return Err(format!("unknown big file kind `{kind}` (random, text, database, sparse)")),
    })
}

/// What `mover-testdata image` builds.
struct ImageSpec {
    layers: u64,
    layer_size: u64,
    platforms: u8,
    tag: String,
    platform_layer_size: Option<u64>,
    seed: u64,
    docker: bool,
}

fn image(dir: &Path, spec: &ImageSpec) -> std::io::Result<()> {
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        return Err(std::io::Error::other(format!("{} exists and is not empty", dir.display())));
    }
    let mut layout = LayoutBuilder::new(dir)?;
    let layer_type = if spec.docker { DOCKER_LAYER_GZIP } else { OCI_LAYER_GZIP };
    let mut shared = Vec::new();
    for i in 0..spec.layers {
        shared.push(layout.random_blob(spec.layer_size, spec.seed.wrapping_mul(1000).wrapping_add(i), layer_type)?);
    }
    let platforms: &[&str] = if spec.platforms == 2 { &["amd64", "arm64"] } else { &["amd64"] };
    let mut images: Vec<(Descriptor, &str, &str)> = Vec::new();
    let mut blobs = shared.clone();
    for (p, arch) in platforms.iter().enumerate() {
        let mut layers = shared.clone();
        if let Some(size) = spec.platform_layer_size {
            let seed = spec.seed.wrapping_mul(1000).wrapping_add(500 + p as u64);
            layers.push(layout.random_blob(size, seed, layer_type)?);
            blobs.push(layers[layers.len() - 1].clone());
        }
        let (manifest, config) = layout.image_with_config("linux", arch, &layers, spec.docker)?;
        blobs.push(manifest.clone());
        blobs.push(config);
        images.push((manifest, "linux", arch));
    }
    let mut tags = Vec::new();
    if images.len() == 1 {
        tags.push((spec.tag.clone(), images[0].0.clone()));
    } else {
        for (manifest, _, arch) in &images {
            tags.push((format!("{}-{arch}", spec.tag), manifest.clone()));
        }
        let index = layout.index(&images, spec.docker)?;
        blobs.push(index.clone());
        tags.push((spec.tag.clone(), index));
    }
    for (tag, desc) in &tags {
        layout.tag(tag, desc)?;
        println!("{tag}\t{}\t{}\t{}", desc.media_type, desc.digest, desc.size);
    }
    println!("{} blobs, {} bytes", blobs.len(), blobs.iter().map(|b| b.size).sum::<u64>());
    Ok(())
}

/// Serves two simulated clusters until SIGTERM or SIGINT; `DIR/pid` names this process.
fn cluster_up(dir: &Path, with_app: bool) -> Result<(), String> {
    let agent = std::env::current_exe().map_err(|e| e.to_string())?.with_file_name("mover-agent");
    if !agent.is_file() {
        return Err(format!("no `{}`: build the workspace first (`cargo build`)", agent.display()));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
    let pair = mover_testdata::cluster::ClusterPair::start(dir, &agent, (10, 11))
        .map_err(|e| format!("cannot start the clusters in `{}`: {e}", dir.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    if with_app {
        runtime
            .block_on(mover_testdata::cluster::app::deploy(&pair, 2000))
            .map_err(|e| format!("cannot deploy the application: {e}"))?;
    }
    std::fs::write(dir.join("pid"), std::process::id().to_string()).map_err(|e| e.to_string())?;
    println!(
        "clusters `source` ({}) and `target` ({}) are up; KUBECONFIG={}",
        pair.source.url(),
        pair.target.url(),
        pair.kubeconfig.display()
    );
    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let (mut interrupt, mut terminate) = (
            signal(SignalKind::interrupt()).map_err(|e| e.to_string())?,
            signal(SignalKind::terminate()).map_err(|e| e.to_string())?,
        );
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        Ok::<(), String>(())
    })?;
    drop(pair);
    let _ = std::fs::remove_file(dir.join("pid"));
    Ok(())
}

/// Compares each claim of the application with its namespace and name in the target cluster.
fn check_app(dir: &Path) -> Result<bool, String> {
    use mover_testdata::cluster::app;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let kubeconfig = dir.join("kubeconfig");
        let config = kube::config::Kubeconfig::read_from(&kubeconfig).map_err(|e| e.to_string())?;
        let mut same = true;
        for (namespace, name, _) in app::CLAIMS {
            let mut dirs = Vec::new();
            for context in ["source", "target"] {
                let options =
                    kube::config::KubeConfigOptions { context: Some(context.to_owned()), ..Default::default() };
                let config =
                    kube::Config::from_custom_kubeconfig(config.clone(), &options).await.map_err(|e| e.to_string())?;
                let client = kube::Client::try_from(config).map_err(|e| e.to_string())?;
                dirs.push(
                    app::volume_dir(&client, &dir.join(context), namespace, name).await.map_err(|e| e.to_string())?,
                );
            }
            let differences =
                mover_testdata::compare(&dirs[0], &dirs[1], &CompareOptions::default()).map_err(|e| e.to_string())?;
            println!(
                "{namespace}/{name}: {}",
                if differences.is_empty() {
                    "identical".to_owned()
                } else {
                    format!("{} differences", differences.len())
                }
            );
            same &= differences.is_empty();
        }
        Ok(same)
    })
}

/// A client of context `context` of the clusters in `dir` (`DIR/kubeconfig`: the administrator).
async fn client_of(dir: &Path, context: &str) -> Result<kube::Client, String> {
    let kubeconfig = kube::config::Kubeconfig::read_from(dir.join("kubeconfig")).map_err(|e| e.to_string())?;
    let options = kube::config::KubeConfigOptions { context: Some(context.to_owned()), ..Default::default() };
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options).await.map_err(|e| e.to_string())?;
    kube::Client::try_from(config).map_err(|e| e.to_string())
}

/// Creates the objects of the YAML documents on standard input in context `context`.
fn apply(dir: &Path, context: &str) -> Result<(), String> {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map_err(|e| format!("reading stdin: {e}"))?;
    let objects: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(&text).map_err(|e| format!("the manifests on stdin are not YAML: {e}"))?;
    let objects: Vec<serde_json::Value> = objects.into_iter().filter(|object| !object.is_null()).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let client = client_of(dir, context).await?;
        mover_testdata::cluster::app::apply(&client, &objects).await.map_err(|e| e.to_string())
    })?;
    println!("context `{context}`: {} objects created", objects.len());
    Ok(())
}

/// Prints what context `context` of the clusters in `dir` runs in the application's namespaces.
fn print_workloads(dir: &Path, context: &str) -> Result<(), String> {
    use mover_testdata::cluster::{app, inspect};
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let client = client_of(dir, context).await?;
        let mut namespaces: Vec<&str> = app::CLAIMS.iter().map(|(namespace, _, _)| *namespace).collect();
        namespaces.dedup();
        for line in inspect::workloads(&client, &namespaces).await.map_err(|e| e.to_string())? {
            println!("{context}: {line}");
        }
        Ok(())
    })
}

/// Stops the clusters `cluster up DIR` started, and waits until they are gone.
fn cluster_down(dir: &Path) -> Result<(), String> {
    let pid = std::fs::read_to_string(dir.join("pid"))
        .map_err(|e| format!("no clusters run in `{}` ({e})", dir.display()))?;
    let pid: i32 = pid.trim().parse().map_err(|_| format!("`{}` holds no process id", dir.join("pid").display()))?;
    let process = rustix::process::Pid::from_raw(pid).ok_or("a process id of 0")?;
    rustix::process::kill_process(process, rustix::process::Signal::TERM)
        .map_err(|e| format!("cannot stop process {pid}: {e}"))?;
    for _ in 0..600 {
        if rustix::process::test_kill_process(process).is_err() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("process {pid} is still running after a minute"))
}

fn run(args: &[String]) -> Result<bool, String> {
    let usage = "usage: mover-testdata cluster up DIR [--with-app] | cluster check-app DIR | cluster workloads DIR [--context source|target] | cluster apply DIR [--context source|target] < MANIFESTS | cluster down DIR\n       mover-testdata generate DIR [--entries N] [--max-file-size SIZE] [--big KIND:SIZE]... [--plain] [--seed N]\n       mover-testdata compare A B [--no-ownership] [--no-allocation]\n       mover-testdata image DIR [--layers N] [--layer-size SIZE] [--platforms 1|2] [--tag TAG] [--platform-layer-size SIZE] [--seed N] [--docker]\n       mover-testdata delay-relay LISTEN UPSTREAM MILLIS";
    // `generate --help` once made a tree named `--help`: positionals never start with `-`.
    let positionals = match args.first().map(String::as_str) {
        Some("compare" | "cluster") => 2,
        Some("delay-relay") => 3,
        _ => 1,
    };
    if args.iter().skip(1).take(positionals).any(|arg| arg.starts_with('-')) || args.iter().any(|arg| arg == "--help") {
        return Err(usage.into());
    }
    match args.first().map(String::as_str) {
        Some("cluster") => {
            let dir = Path::new(args.get(2).ok_or(usage)?);
            match args.get(1).map(String::as_str) {
                Some("up") => cluster_up(dir, args.get(3).map(String::as_str) == Some("--with-app")).map(|()| true),
                Some("check-app") => check_app(dir),
                Some(command @ ("workloads" | "apply")) => {
                    let context = match &args[3..] {
                        [] => "source",
                        [flag, context] if flag == "--context" && ["source", "target"].contains(&context.as_str()) => {
                            context
                        }
                        _ => return Err(usage.into()),
                    };
                    if command == "apply" { apply(dir, context) } else { print_workloads(dir, context) }.map(|()| true)
                }
                Some("down") => cluster_down(dir).map(|()| true),
                _ => Err(usage.into()),
            }
        }
        Some("generate") => {
            let dir = PathBuf::from(args.get(1).ok_or(usage)?);
            let mut spec = TreeSpec::with_entries(2_000);
            let mut bigs = Vec::new();
            let mut rest = args[2..].iter();
            while let Some(flag) = rest.next() {
                let mut value = || rest.next().ok_or_else(|| format!("`{flag}` needs a value"));
                match flag.as_str() {
                    "--entries" => {
                        let seed = spec.seed;
                        let exotic = spec.exotic;
                        spec = TreeSpec::with_entries(value()?.parse().map_err(|_| "bad --entries")?);
                        spec.seed = seed;
                        spec.exotic = exotic;
                    }
                    "--max-file-size" => spec.max_file_size = size(value()?)?,
                    "--big" => bigs.push(big(value()?)?),
                    "--plain" => spec.exotic = false,
                    "--seed" => spec.seed = value()?.parse().map_err(|_| "bad --seed")?,
                    other => return Err(format!("unknown flag `{other}`\n{usage}")),
                }
            }
            if !bigs.is_empty() {
                spec.big_files = bigs;
            }
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let stats = mover_testdata::generate(&dir, &spec).map_err(|e| format!("generate: {e}"))?;
            println!("{} entries, {} files, {} bytes", stats.entries, stats.files, stats.bytes);
            Ok(true)
        }
        Some("compare") => {
            let (a, b) = (args.get(1).ok_or(usage)?, args.get(2).ok_or(usage)?);
            let mut options = CompareOptions::default();
            for flag in &args[3..] {
                match flag.as_str() {
                    "--no-ownership" => options.ownership = false,
                    "--no-allocation" => options.allocation = false,
                    other => return Err(format!("unknown flag `{other}`\n{usage}")),
                }
            }
            let differences =
                mover_testdata::compare(a.as_ref(), b.as_ref(), &options).map_err(|e| format!("compare: {e}"))?;
            for difference in differences.iter().take(50) {
                println!("{difference}");
            }
            if differences.is_empty() {
                println!("identical");
            } else {
                println!("{} differences", differences.len());
            }
            Ok(differences.is_empty())
        }
        Some("delay-relay") => {
            let [listen, upstream, millis] = &args[1..] else { return Err(usage.into()) };
            let millis: u64 = millis.parse().map_err(|_| format!("MILLIS must be a number, not `{millis}`"))?;
            let relay = DelayRelay::listen(listen, upstream, Duration::from_millis(millis))
                .map_err(|e| format!("delay-relay on {listen}: {e}"))?;
            println!("relaying {} -> {upstream}, {millis} ms each way", relay.addr);
            relay.wait();
            Ok(true)
        }
        Some("image") => {
            let dir = PathBuf::from(args.get(1).ok_or(usage)?);
            let mut spec = ImageSpec {
                layers: 4,
                layer_size: 16 << 20,
                platforms: 1,
                tag: "latest".into(),
                platform_layer_size: None,
                seed: 1,
                docker: false,
            };
            let mut rest = args[2..].iter();
            while let Some(flag) = rest.next() {
                let mut value = || rest.next().ok_or_else(|| format!("`{flag}` needs a value"));
                match flag.as_str() {
                    "--layers" => spec.layers = value()?.parse().map_err(|_| "bad --layers")?,
                    "--layer-size" => spec.layer_size = size(value()?)?,
                    "--platforms" => {
                        spec.platforms = match value()?.as_str() {
                            "1" => 1,
                            "2" => 2,
                            other => return Err(format!("--platforms takes 1 or 2, not `{other}`")),
                        }
                    }
                    "--tag" => spec.tag.clone_from(value()?),
                    "--platform-layer-size" => spec.platform_layer_size = Some(size(value()?)?),
                    "--seed" => spec.seed = value()?.parse().map_err(|_| "bad --seed")?,
                    "--docker" => spec.docker = true,
                    other => return Err(format!("unknown flag `{other}`\n{usage}")),
                }
            }
            image(&dir, &spec).map_err(|e| format!("image {}: {e}", dir.display()))?;
            Ok(true)
        }
        _ => Err(usage.to_owned()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}
