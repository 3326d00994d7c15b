//! Which of the fleet's models go to which node: a model goes to a node whose model reader
//! runs every operator the model uses, as the node reported in its `RuntimeInfo`. A node
//! with no reader (built without one, or too old to say) gets none, and a model pushed with
//! an operator some nodes lack reaches the others only; the push's answer names the rest.
//! A model of a purpose added after the protocol version a node's session negotiated
//! (`ModelPurpose::since`) is never offered to it: the node could not decode the offer, and
//! would drop its session on it, again at every reconnect.

use edge_proto::{FleetModel, ModelPurpose, OrchMsg};

/// A model the fleet uses for a purpose nodes serve, with the operators it uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveModel {
    pub purpose: ModelPurpose,
    pub digest: [u8; 32],
    pub size: u64,
    /// The ONNX operators the model uses.
    pub operators: Vec<String>,
}

impl ActiveModel {
    /// Whether a node whose reader runs `reader` can run this model.
    pub fn runs_on(&self, reader: &[String]) -> bool {
        !reader.is_empty() && self.operators.iter().all(|op| reader.contains(op))
    }

    /// Whether a node whose reader runs `reader`, on a session of protocol `protocol`, is
    /// offered this model: it runs it, and it can decode the offer.
    pub fn offered_to(&self, reader: &[String], protocol: Option<u16>) -> bool {
        self.runs_on(reader) && protocol.is_some_and(|v| v >= self.purpose.since())
    }

    /// The message that hands the model to a node.
    pub fn offer(&self) -> OrchMsg {
        OrchMsg::Model(Box::new(FleetModel {
            purpose: self.purpose,
            digest: self.digest,
            size: self.size,
        }))
    }
}

/// The purpose nodes know a model by, from the name the operator API uses; `None` for a
/// purpose no node serves (placement is the scheduler's).
pub fn node_purpose(name: &str) -> Option<ModelPurpose> {
    match name {
        "route" => Some(ModelPurpose::Route),
        "warm" => Some(ModelPurpose::Warm),
        _ => None,
    }
}

#[cfg(test)]
mod offers {
    use super::*;

    #[test]
    fn a_warming_model_is_offered_only_to_sessions_that_can_decode_it() {
        let model = |purpose| ActiveModel {
            purpose,
            digest: [0; 32],
            size: 1,
            operators: vec!["Gemm".to_owned()],
        };
        let reader = vec!["Gemm".to_owned(), "Relu".to_owned()];
        let warm = model(ModelPurpose::Warm);
        assert!(warm.offered_to(&reader, Some(2)));
        assert!(
            !warm.offered_to(&reader, Some(1)),
            "a version-1 node cannot decode it"
        );
        assert!(!warm.offered_to(&reader, None), "no session, no offer");
        let route = model(ModelPurpose::Route);
        assert!(route.offered_to(&reader, Some(1)));
        assert!(!route.offered_to(&[], Some(2)), "a node without a reader");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(ops: &[&str]) -> ActiveModel {
        ActiveModel {
            purpose: ModelPurpose::Route,
            digest: [7; 32],
            size: 100,
            operators: ops.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn reader(ops: &[&str]) -> Vec<String> {
        ops.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_model_goes_only_to_nodes_whose_reader_runs_all_its_operators() {
        let m = model(&["Gemm", "Relu"]);
        assert!(m.runs_on(&reader(&["Gemm", "Relu", "Sigmoid"])));
        assert!(!m.runs_on(&reader(&["Gemm"])), "Relu missing");
        assert!(!m.runs_on(&[]), "no reader at all");
        // A model of no operators (an identity graph) still needs a reader.
        assert!(!model(&[]).runs_on(&[]));
        assert!(model(&[]).runs_on(&reader(&["Gemm"])));
        assert_eq!(
            m.offer(),
            OrchMsg::Model(Box::new(FleetModel {
                purpose: ModelPurpose::Route,
                digest: [7; 32],
                size: 100,
            }))
        );
    }

    #[test]
    fn only_routing_and_warming_models_are_the_nodes_business() {
        assert_eq!(node_purpose("route"), Some(ModelPurpose::Route));
        assert_eq!(node_purpose("warm"), Some(ModelPurpose::Warm));
        assert_eq!(node_purpose("WARM"), None);
        assert_eq!(node_purpose("place"), None);
        assert_eq!(node_purpose("ROUTE"), None);
    }
}
