//! Where versions a node merges are passed on.

use crate::proto::mesh::Mesh;
use crate::proto::{ConnId, PeerKind};

/// Where a version that came from one peer by state transfer or merge is
/// passed on ([`Replica::pass_on`]): found once per message, not once per
/// item (a node joining through one peer merges its whole dictionary:
/// looking the links up for each of a million items took a tenth of the
/// joiner's `perf` samples).
pub(super) struct PassOn {
    /// rs2p peers in the broadcast tree, but the source.
    pub(super) tree: Vec<ConnId>,
    /// py2p and js2p peers ([`Mesh::reference_relays`]).
    pub(super) references: Vec<ConnId>,
}

impl PassOn {
    pub(super) fn of(mesh: &Mesh, from: ConnId) -> PassOn {
        PassOn {
            tree: mesh
                .routed(Some(PeerKind::Rs))
                .into_iter()
                .filter(|c| *c != from && mesh.eager(*c))
                .collect(),
            references: mesh.reference_relays(from),
        }
    }
}
