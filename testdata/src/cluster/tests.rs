//! Tests of the simulated cluster through a real `kube::Client`.
