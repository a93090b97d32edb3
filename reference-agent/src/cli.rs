//! Pieces of the command-line tools that are worth testing on their own: typed argument
//! syntax, output formatting, exit codes.
//!
//! Argument syntax: `name=type:value`, e.g. `cluster=res:/cluster/rd00 count=i4:3`.
//! Types: `i4` (or `int`), `double`, `boolean` (`1|0|true|false`), `string`, `base64`,
//! `res`, `nil`, `json` (the tagged JSON mapping of the spec, e.g.
//! `tags=json:{"list":[{"string":"a"}]}`). `name=value` without a type is a string.

use vertebra_protocol::value::{decode_base64, parse_boolean, parse_double, parse_i4};
use vertebra_protocol::{Args, Resource, Value};

use crate::node::CallError;

/// Process exit codes of `vertebra`.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// The call failed at the responder (nack or error).
    pub const CALL_FAILED: i32 = 1;
    /// Bad command line.
    pub const USAGE: i32 = 2;
    /// Could not connect / log in.
    pub const CONNECT: i32 = 3;
    /// No capable agent, or the dispatcher did not answer.
    pub const NO_AGENT: i32 = 4;
    /// Deadline passed or the responder disappeared.
    pub const TIMEOUT: i32 = 5;
}

/// Exit code for a failed call.
pub fn exit_code_for(e: &CallError) -> i32 {
    match e.condition.as_str() {
        "no-capable-agent" | "dispatcher-unavailable" => exit::NO_AGENT,
        "deadline-expired" | "responder-gone" | "connection-lost" => exit::TIMEOUT,
        _ => exit::CALL_FAILED,
    }
}

/// Parse one `name=type:value` argument.
pub fn parse_arg(s: &str) -> Result<(String, Value), String> {
    let (name, rest) = s
        .split_once('=')
        .ok_or_else(|| format!("argument {s:?}: expected name=type:value (e.g. count=i4:3)"))?;
    if name.is_empty() {
        return Err(format!("argument {s:?}: empty name"));
    }
    let (ty, val) = match rest.split_once(':') {
        Some((t, v))
            if matches!(
                t,
                "i4" | "int"
                    | "integer"
                    | "double"
                    | "boolean"
                    | "bool"
                    | "string"
                    | "base64"
                    | "res"
                    | "nil"
                    | "json"
            ) =>
        {
            (t, v)
        }
        _ => ("string", rest),
    };
    let bad = |e: String| format!("argument {name}: {e}");
    let v = match ty {
        "i4" | "int" | "integer" => Value::I4(parse_i4(val).map_err(|e| bad(e.detail))?),
        "double" => Value::Double(parse_double(val).map_err(|e| bad(e.detail))?),
        "boolean" | "bool" => Value::Boolean(parse_boolean(val).map_err(|e| bad(e.detail))?),
        "string" => Value::String(val.into()),
        "base64" => Value::Base64(decode_base64(val).map_err(|e| bad(e.detail))?),
        "res" => Value::Res(Resource::parse(val).map_err(|e| bad(e.detail))?),
        "nil" => Value::Nil,
        "json" => serde_json::from_str::<Value>(val).map_err(|e| bad(e.to_string()))?,
        _ => unreachable!("type list above"),
    };
    Ok((name.to_string(), v))
}

/// Parse all arguments into named values (duplicate names are an error).
pub fn parse_args(list: &[String]) -> Result<Args, String> {
    let mut a = Args::new();
    for s in list {
        let (n, v) = parse_arg(s)?;
        if a.get(&n).is_some() {
            return Err(format!("argument {n} given twice"));
        }
        a.insert(n, v);
    }
    Ok(a)
}

/// Human rendering of a value.
pub fn show_value(v: &Value) -> String {
    match v {
        Value::I4(i) => i.to_string(),
        Value::Double(d) => vertebra_protocol::value::format_double(*d),
        Value::Boolean(b) => b.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Base64(b) => format!("base64:{}", vertebra_protocol::value::encode_base64(b)),
        Value::DateTime(d) => d.to_rfc3339(),
        Value::List(l) => format!(
            "[{}]",
            l.iter().map(show_value).collect::<Vec<_>>().join(", ")
        ),
        Value::Struct(s) => format!(
            "{{{}}}",
            s.iter()
                .map(|(k, v)| format!("{k}: {}", show_value(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Nil => "nil".into(),
        Value::Res(r) => r.as_str().to_string(),
        Value::Exception(e) => format!("exception {}: {}", e.class, e.message),
    }
}

/// Human rendering of one chunk: `name = value` lines.
pub fn show_chunk(a: &Args) -> String {
    a.iter()
        .map(|(k, v)| format!("  {k} = {}", show_value(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_args() {
        let a = parse_args(&[
            "cluster=res:/cluster/rd00".into(),
            "count=i4:3".into(),
            "name=hello".into(),
            "on=boolean:true".into(),
            "tags=json:{\"list\":[{\"string\":\"a\"}]}".into(),
        ])
        .unwrap();
        assert_eq!(a.get_res("cluster").unwrap().as_str(), "/cluster/rd00");
        assert_eq!(a.get_i4("count"), Some(3));
        assert_eq!(a.get_str("name"), Some("hello"));
        assert_eq!(a.get_bool("on"), Some(true));
        assert_eq!(a.get_list("tags").unwrap().len(), 1);
    }

    #[test]
    fn bad_args_are_clear_errors() {
        assert!(parse_arg("count").unwrap_err().contains("name=type:value"));
        assert!(parse_arg("count=i4:x").unwrap_err().contains("count"));
        assert!(parse_arg("r=res:no-slash").is_err());
        assert!(parse_args(&["a=1".into(), "a=2".into()]).is_err());
        assert!(parse_arg("=i4:1").is_err());
    }

    #[test]
    fn exit_codes() {
        assert_eq!(
            exit_code_for(&CallError::local("no-capable-agent", "")),
            exit::NO_AGENT
        );
        assert_eq!(
            exit_code_for(&CallError::local("responder-gone", "")),
            exit::TIMEOUT
        );
        assert_eq!(
            exit_code_for(&CallError::local("handler-failed", "")),
            exit::CALL_FAILED
        );
    }
}
