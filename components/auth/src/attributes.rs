//! What a request wants to do, and the answer of an authorizer.

use crate::UserInfo;

/// Request attributes, as Kubernetes' authorizer.Attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    /// Who makes the request.
    pub user: UserInfo,
    /// get list watch create update patch delete deletecollection (or approve, bind, escalate,
    /// impersonate, ...) for resource requests; the lower-case HTTP verb for non-resource requests.
    pub verb: String,
    /// Namespace of the object; empty for cluster-scoped resources and all-namespace requests.
    pub namespace: String,
    /// API group; empty for the core group.
    pub api_group: String,
    /// API version.
    pub api_version: String,
    /// Resource (plural, lower-case), e.g. `pods`.
    pub resource: String,
    /// Subresource, e.g. `status`, `log`; empty when none.
    pub subresource: String,
    /// Object name; empty for list/watch/create-without-name requests.
    pub name: String,
    /// Whether this is a request for an API resource (false for `/version`, `/healthz`, ...).
    pub resource_request: bool,
    /// Request path (used for non-resource requests).
    pub path: String,
}

impl Attributes {
    /// A resource request.
    pub fn resource(
        user: UserInfo,
        verb: &str,
        namespace: &str,
        api_group: &str,
        resource: &str,
        name: &str,
    ) -> Self {
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        Attributes {
            user,
            verb: verb.to_string(),
            namespace: namespace.to_string(),
            api_group: api_group.to_string(),
            resource: resource.to_string(),
            subresource: subresource.to_string(),
            name: name.to_string(),
            resource_request: true,
            ..Attributes::default()
        }
    }

    /// A non-resource request (`verb` is the lower-case HTTP method, e.g. `get`).
    pub fn non_resource(user: UserInfo, verb: &str, path: &str) -> Self {
        Attributes {
            user,
            verb: verb.to_string(),
            path: path.to_string(),
            resource_request: false,
            ..Attributes::default()
        }
    }

    /// `resource` or `resource/subresource`.
    pub fn combined_resource(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }

    /// A short description for messages: `list pods in API group "" in namespace "default"`.
    pub fn describe(&self) -> String {
        if !self.resource_request {
            return format!("{} non-resource URL {:?}", self.verb, self.path);
        }
        let mut text = format!(
            "{} resource {:?} in API group {:?}",
            self.verb,
            self.combined_resource(),
            self.api_group
        );
        if !self.name.is_empty() {
            text.push_str(&format!(" named {:?}", self.name));
        }
        if self.namespace.is_empty() {
            text.push_str(" at the cluster scope");
        } else {
            text.push_str(&format!(" in the namespace {:?}", self.namespace));
        }
        text
    }
}

/// The answer of an authorizer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Why: which binding allowed it, or which check failed.
    pub reason: String,
}

impl Decision {
    /// An allowing decision.
    pub fn allow(reason: impl Into<String>) -> Self {
        Decision {
            allowed: true,
            reason: reason.into(),
        }
    }

    /// A refusing decision.
    pub fn deny(reason: impl Into<String>) -> Self {
        Decision {
            allowed: false,
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_split_subresources_and_describe() {
        let attrs =
            Attributes::resource(UserInfo::default(), "get", "default", "", "pods/log", "web");
        assert_eq!(attrs.resource, "pods");
        assert_eq!(attrs.subresource, "log");
        assert_eq!(attrs.combined_resource(), "pods/log");
        assert_eq!(
            attrs.describe(),
            "get resource \"pods/log\" in API group \"\" named \"web\" in the namespace \"default\""
        );
        let attrs = Attributes::non_resource(UserInfo::default(), "get", "/version");
        assert!(!attrs.resource_request);
        assert_eq!(attrs.describe(), "get non-resource URL \"/version\"");
    }
}
