//! mover's migration plans as a library, for every front end (the `mover` CLI today, a
//! Kubernetes layer later): the plan model (no file format: front ends read their own), the
//! [`Location`] of a volume end, the one copy dispatch ([`copy_volume`]) and the executor
//! ([`execute`]) with the traits it runs on ([`Runtime`]).
//!
//! This crate depends on `mover-engine` only; it never prints, never reads environment
//! variables, and its messages name no front end's flags.

mod dispatch;
mod execute;
mod location;
mod model;
pub mod record;
mod runtime;

pub use dispatch::{DispatchError, LocalReceiver, Peers, copy_volume};
pub use execute::{Run, execute};
pub use location::{ClaimRef, Location, LocationError, parse_location};
pub use model::{
    AgentRef, ClaimTarget, Clusters, DEFAULT_HOOK_IMAGE, DEFAULT_HOOK_TIMEOUT, DEFAULT_TOKEN_LIFETIME, ExposedRegistry,
    Exposure, Hook, HookAction, HookJob, ImageDiscovery, ImageTransfer, MIN_TOKEN_LIFETIME,
    OPENSHIFT_INTERNAL_REGISTRY, Phase, Plan, RegistrySide, Side, Sides, VolumeOptions, VolumePlan, agents_of,
    check_router_address,
};
pub use record::{NoRunLog, RunLog, RunRecord, Step, StepOutcome, StepRecord};
pub use runtime::{
    FoundImage, FoundImages, HookRunner, ImageFinder, ImageTransfers, LocalHooks, NoWorkloads, Observer, Runtime,
    SkippedImage, VolumeResolver, Workloads, WrittenLocations,
};
