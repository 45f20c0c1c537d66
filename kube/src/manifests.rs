//! Renders objects as one multi-document YAML stream, as `kubectl apply -f -` reads it
//! (serde-saphyr's serializer).

use crate::objects::Object;

/// The objects as YAML documents separated by `---`, each with `apiVersion` and `kind`.
pub fn to_yaml(objects: &[Object]) -> Result<String, serde_saphyr::SerializeError> {
    serde_saphyr::to_string_multiple(objects)
}
