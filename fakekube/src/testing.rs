//! Fixtures for the unit tests.

use crate::store::Store;

/// A store with the project's CRDs applied, as `FakeApiServer::start` has.
pub(crate) fn store_with_crds() -> Store {
    let mut store = Store::new(7);
    crate::crd::install(&mut store, crate::crd::PROJECT_CRDS).expect("deploy/crds.yaml");
    store
}
