//! The embedded templates and the strict minijinja environment that renders them.

use std::net::IpAddr;

use minijinja::value::{Kwargs, Serde, StringInput};
use minijinja::{AutoEscape, Environment, State, UndefinedBehavior, Value};
use serde::Serialize;

use crate::error::TemplateError;

/// A template compiled into the binary.
#[derive(Clone, Copy)]
struct EmbeddedTemplate {
    name: &'static str,
    source: &'static str,
}

/// Declares the embedded templates; each file lives in `templates/files/<name>`.
macro_rules! embedded_templates {
    ($($name:literal),* $(,)?) => {
        &[$(EmbeddedTemplate { name: $name, source: include_str!(concat!("../files/", $name)) }),*]
    };
}

/// Every template shipped in the binary, in a fixed order.
const TEMPLATES: &[EmbeddedTemplate] = embedded_templates![
    "kube-apiserver.yaml.j2",
    "kube-controller-manager.yaml.j2",
    "kube-scheduler.yaml.j2",
    "etcd.yaml.j2",
    "kinit-agent.service.j2",
    "kinit-agent-config.yaml.j2",
    "containerd-config.toml.j2",
    "10-kinit.conflist.j2",
    "haproxy.cfg.j2",
    "keepalived.conf.j2",
    "check_apiserver.sh.j2",
];

/// Names of all embedded templates, in a fixed order (usable with [`render_template`]).
pub fn template_names() -> Vec<&'static str> {
    TEMPLATES.iter().map(|t| t.name).collect()
}

/// The source text of an embedded template, for `kinit config` style inspection.
pub fn template_source(name: &str) -> Result<&'static str, TemplateError> {
    find_template(name).map(|t| t.source)
}

fn find_template(name: &str) -> Result<&'static EmbeddedTemplate, TemplateError> {
    TEMPLATES
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| TemplateError::UnknownTemplate {
            name: name.to_string(),
            available: template_names(),
        })
}

/// Renders one embedded template by name with any serializable context.
///
/// The context must have the shape of [`ClusterRenderContext`](crate::ClusterRenderContext)
/// (e.g. a `serde_json::Value`). Rendering is strict: a value the template uses but the
/// context lacks fails with [`TemplateError::UndefinedVariable`] naming it. No validation of
/// the values is done here; the typed render functions validate first.
pub fn render_template<C: Serialize + ?Sized>(
    name: &str,
    context: &C,
) -> Result<String, TemplateError> {
    let EmbeddedTemplate { name, source } = *find_template(name)?;
    render_source(name, source, context)
}

/// Renders template text that lives elsewhere (e.g. the addon manifests embedded by
/// `kinit-addons`) with the same strict environment and filters as the embedded templates.
/// `name` is used in error messages.
pub fn render_source<C: Serialize + ?Sized>(
    name: &str,
    source: &str,
    context: &C,
) -> Result<String, TemplateError> {
    let env = strict_environment();
    let template = env
        .template_from_named_str(name, source)
        .map_err(|err| TemplateError::from_engine(name, source, err))?;
    template
        .render(Value::from(Serde(context)))
        .map_err(|err| match err.kind() {
            minijinja::ErrorKind::BadSerialization => TemplateError::Context {
                template: name.to_string(),
                message: err.to_string(),
            },
            _ => TemplateError::from_engine(name, source, err),
        })
}

/// Builds the environment: strict undefined values, no auto-escaping (none of the outputs is
/// HTML), block tags on their own lines leave no blank lines, files keep their final newline.
fn strict_environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .keep_trailing_newline(true)
        .build()
        .unwrap_or_else(|err| unreachable!("default delimiters are valid: {err}"));
    env.set_syntax(syntax);
    env.add_filter("tojson", strict_tojson);
    env.add_filter("host_port", host_port);
    env
}

/// `tojson` that refuses undefined values: the built-in one prints them as `null`, which would
/// let a missing value slip into a manifest despite strict mode.
fn strict_tojson(
    state: &State,
    value: &Value,
    indent: Option<Value>,
    kwargs: Kwargs,
) -> Result<Value, minijinja::Error> {
    if value.is_undefined() {
        // Raises the engine's own undefined error, which names the missing expression.
        StringInput::new(state, value)?;
    }
    minijinja::filters::tojson(value, indent, kwargs)
}

/// `{{ ip|host_port(2379) }}` → `10.0.0.1:2379` or `[fd00::1]:2379` (brackets for IPv6).
fn host_port(host: StringInput, port: u16) -> Result<String, minijinja::Error> {
    let host = host.as_str();
    Ok(match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
        Ok(IpAddr::V4(ip)) => format!("{ip}:{port}"),
        Err(_) => format!("{host}:{port}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ClusterRenderContext;
    use serde_json::json;

    #[test]
    fn every_template_compiles() {
        let env = strict_environment();
        for template in TEMPLATES {
            env.template_from_named_str(template.name, template.source)
                .unwrap_or_else(|err| panic!("{} does not compile: {err:#}", template.name));
        }
        assert_eq!(template_names().len(), TEMPLATES.len());
    }

    #[test]
    fn every_template_renders_from_json_context() {
        let context = serde_json::to_value(ClusterRenderContext::example_ha()).unwrap();
        for name in template_names() {
            let text = render_template(name, &context).unwrap();
            assert!(text.ends_with('\n'), "{name} must end with a newline");
        }
    }

    #[test]
    fn unknown_template_is_an_error() {
        let err = render_template("nope.j2", &json!({})).unwrap_err();
        assert!(
            matches!(err, TemplateError::UnknownTemplate { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("kube-apiserver.yaml.j2"));
    }

    #[test]
    fn missing_variable_names_template_and_variable() {
        let mut context = serde_json::to_value(ClusterRenderContext::default()).unwrap();
        context["node"].as_object_mut().unwrap().remove("ip");
        let err = render_template("kube-apiserver.yaml.j2", &context).unwrap_err();
        match &err {
            TemplateError::UndefinedVariable {
                template,
                variable,
                line,
                ..
            } => {
                assert_eq!(template, "kube-apiserver.yaml.j2");
                assert_eq!(variable, "node.ip");
                assert!(*line > 0);
            }
            other => panic!("expected UndefinedVariable, got {other}"),
        }
        let text = err.to_string();
        assert!(
            text.contains("kube-apiserver.yaml.j2") && text.contains("`node.ip`"),
            "{text}"
        );
    }

    #[test]
    fn missing_top_level_section_is_named() {
        let mut context = serde_json::to_value(ClusterRenderContext::default()).unwrap();
        context.as_object_mut().unwrap().remove("images");
        let err = render_template("containerd-config.toml.j2", &context).unwrap_err();
        assert!(
            matches!(&err, TemplateError::UndefinedVariable { variable, .. } if variable.starts_with("images")),
            "{err}"
        );
    }

    #[test]
    fn tojson_does_not_print_undefined_as_null() {
        let env = strict_environment();
        let err = env
            .render_str("x: {{ missing|tojson }}", Serde(json!({})))
            .unwrap_err();
        assert_eq!(err.kind(), minijinja::ErrorKind::UndefinedError);
        assert_eq!(
            env.render_str("{{ v|tojson }}", Serde(json!({"v": "a: \"b\""})))
                .unwrap(),
            r#""a: \"b\"""#
        );
    }

    #[test]
    fn no_html_escaping() {
        let env = strict_environment();
        assert_eq!(
            env.render_str("{{ v }}", Serde(json!({"v": "<a & 'b'>"})))
                .unwrap(),
            "<a & 'b'>"
        );
    }

    #[test]
    fn host_port_brackets_ipv6() {
        let env = strict_environment();
        let render = |ip: &str| {
            env.render_str("{{ ip|host_port(2379) }}", Serde(json!({ "ip": ip })))
                .unwrap()
        };
        assert_eq!(render("10.0.0.1"), "10.0.0.1:2379");
        assert_eq!(render("fd00::1"), "[fd00::1]:2379");
        assert_eq!(render("lb.example"), "lb.example:2379");
    }
}
