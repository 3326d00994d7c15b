//! What an operator does to a node, across the handles it touches: deleting one (registry,
//! its live connection, its instances) and cordoning or draining one (registry, placements).
//! Both block on store writes: call them off the async workers.

use crate::deployer::{Committed, Deployer};
use crate::links::NodeLinks;
use crate::registry::Registry;
use edge_proto::{NodeId, RejectCode};
use orchestrator_core::fleet::Change;
use orchestrator_core::store::StoreError;

/// Forgets a node and closes its session; its instances go elsewhere. `Ok(false)` if there
/// was no such node.
pub fn delete_node(
    registry: &Registry,
    links: &NodeLinks,
    deployments: &Deployer,
    id: NodeId,
) -> Result<bool, StoreError> {
    let Some((change, session)) = registry.fleet().delete_node(id) else {
        return Ok(false);
    };
    registry.persist(&change)?;
    if let Some(session) = session {
        links.close_session(session, RejectCode::UnknownNode, "node deleted");
    }
    deployments.deploy(|d| ((), d.node_removed(id)));
    Ok(true)
}

/// Cordons or uncordons a node; with `drain`, also moves its instances elsewhere. `Ok(None)`
/// if there is no such node.
pub fn set_cordon(
    registry: &Registry,
    deployments: &Deployer,
    id: NodeId,
    cordoned: bool,
    drain: bool,
) -> Result<Option<Committed>, StoreError> {
    let (change, online) = {
        let mut fleet = registry.fleet();
        let Some(change) = fleet.set_cordoned(id, cordoned) else {
            return Ok(None);
        };
        (change, fleet.is_online(id))
    };
    registry.persist(&change)?;
    let Change::Node(record) = change else {
        return Ok(None);
    };
    let ((), committed) = deployments.deploy(|d| {
        let mut effects = d.node_changed(*record, online);
        if drain {
            effects.extend(d.drain(id));
        }
        ((), effects)
    });
    Ok(Some(committed))
}
