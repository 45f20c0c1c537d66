//! Label selectors (`=`, `==`, `!=`, `in`, `notin`, exists, `!` not exists) and field selectors
//! (`metadata.name`, `metadata.namespace`, `spec.nodeName`, `status.phase`; `=`, `==`, `!=`).

use serde_json::Value;

use super::status::ApiError;

enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector; the empty selector matches everything.
pub struct LabelSelector(Vec<Requirement>);

/// Splits on commas outside parentheses.
fn terms(text: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0_i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(text[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(text[start..].trim());
    out.into_iter().filter(|t| !t.is_empty()).collect()
}

fn set_of(text: &str) -> Option<Vec<String>> {
    let inner = text.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(inner.split(',').map(|v| v.trim().to_owned()).collect())
}

impl LabelSelector {
    /// Parses `labelSelector`; a bad one is the 400 the real server sends.
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        let bad = || ApiError::bad_request(format!("unable to parse requirement: invalid label selector: {text:?}"));
        let mut requirements = Vec::new();
        for term in terms(text) {
            let requirement = if let Some(key) = term.strip_prefix('!') {
                Requirement::NotExists(key.trim().to_owned())
            } else if let Some((key, value)) = term.split_once("!=") {
                Requirement::NotEquals(key.trim().to_owned(), value.trim().to_owned())
            } else if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
                Requirement::Equals(key.trim().to_owned(), value.trim().to_owned())
            } else if let Some((key, set)) = term.split_once(" notin ") {
                Requirement::NotIn(key.trim().to_owned(), set_of(set).ok_or_else(bad)?)
            } else if let Some((key, set)) = term.split_once(" in ") {
                Requirement::In(key.trim().to_owned(), set_of(set).ok_or_else(bad)?)
            } else if term.contains(char::is_whitespace) || term.contains('(') {
                return Err(bad());
            } else {
                Requirement::Exists(term.to_owned())
            };
            requirements.push(requirement);
        }
        Ok(LabelSelector(requirements))
    }

    /// Whether an object's labels match.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        let label = |key: &str| labels.get(key).and_then(Value::as_str);
        self.0.iter().all(|requirement| match requirement {
            Requirement::Equals(key, value) => label(key) == Some(value),
            Requirement::NotEquals(key, value) => label(key) != Some(value),
            Requirement::In(key, set) => label(key).is_some_and(|v| set.iter().any(|s| s == v)),
            Requirement::NotIn(key, set) => label(key).is_none_or(|v| set.iter().all(|s| s != v)),
            Requirement::Exists(key) => label(key).is_some(),
            Requirement::NotExists(key) => label(key).is_none(),
        })
    }
}

/// A parsed field selector.
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parses `fieldSelector`; a field the server does not index is the real server's 400.
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        let mut requirements = Vec::new();
        for term in terms(text) {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, true, v)
            } else {
                return Err(ApiError::bad_request(format!("invalid selector: '{text}'; can't understand '{term}'")));
            };
            let field = field.trim();
            if !matches!(field, "metadata.name" | "metadata.namespace" | "spec.nodeName" | "status.phase") {
                return Err(ApiError::bad_request(format!("field label not supported: {field}")));
            }
            requirements.push((field.to_owned(), equal, value.trim().to_owned()));
        }
        Ok(FieldSelector(requirements))
    }

    /// Whether an object's fields match (an absent field is the empty string).
    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let actual = field.split('.').fold(object, |v, part| &v[part]).as_str().unwrap_or("");
            (actual == value) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn label_selectors_match_as_the_server_does() {
        let object = json!({"metadata": {"labels": {"app": "db", "tier": "back"}}});
        let yes = ["app=db", "app==db,tier", "app!=web", "app in (db, web)", "env notin (prod)", "!env", ""];
        let no = ["app=web", "app!=db", "app in (web)", "tier notin (back)", "env", "!app"];
        for text in yes {
            assert!(LabelSelector::parse(text).unwrap().matches(&object), "{text} should match");
        }
        for text in no {
            assert!(!LabelSelector::parse(text).unwrap().matches(&object), "{text} should not match");
        }
        assert!(LabelSelector::parse("app in db").is_err());
    }

    #[test]
    fn field_selectors_match_and_refuse_unknown_fields() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "node-a"}, "status": {"phase": "Running"}});
        assert!(FieldSelector::parse("spec.nodeName=node-a,status.phase!=Failed").unwrap().matches(&pod));
        assert!(!FieldSelector::parse("metadata.name=q").unwrap().matches(&pod));
        assert_eq!(
            FieldSelector::parse("spec.bogus=1").err().unwrap().message,
            "field label not supported: spec.bogus"
        );
    }
}
