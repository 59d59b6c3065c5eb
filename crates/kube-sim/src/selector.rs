//! Label and field selectors, parsed from the query string and matched against objects.

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq)]
pub enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed `labelSelector`: all requirements must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(pub Vec<Requirement>);

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_value(v: &str) -> bool {
    v.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Splits on commas that are not inside parentheses.
fn split_top(s: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err("unbalanced ')'".into());
                }
            }
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced '('".into());
    }
    out.push(&s[start..]);
    Ok(out)
}

fn parse_set(rest: &str) -> Result<Vec<String>, String> {
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("expected '(values)', found '{rest}'"))?;
    let vals: Vec<String> = inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect();
    if let Some(bad) = vals.iter().find(|v| !valid_value(v)) {
        return Err(format!("invalid label value: \"{bad}\""));
    }
    Ok(vals)
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(LabelSelector(reqs));
        }
        for part in split_top(s)? {
            let part = part.trim();
            if part.is_empty() {
                return Err("empty requirement".into());
            }
            let req = if let Some(k) = part.strip_prefix('!') {
                Requirement::NotExists(k.trim().to_string())
            } else if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==") {
                Requirement::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once('=') {
                Requirement::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, rest)) = part.split_once(" notin") {
                Requirement::NotIn(k.trim().into(), parse_set(rest)?)
            } else if let Some((k, rest)) = part.split_once(" in") {
                Requirement::In(k.trim().into(), parse_set(rest)?)
            } else {
                Requirement::Exists(part.to_string())
            };
            let (key, vals): (&str, Vec<&String>) = match &req {
                Requirement::Eq(k, v) | Requirement::NotEq(k, v) => (k, vec![v]),
                Requirement::In(k, vs) | Requirement::NotIn(k, vs) => (k, vs.iter().collect()),
                Requirement::Exists(k) | Requirement::NotExists(k) => (k, vec![]),
            };
            if !valid_key(key) {
                return Err(format!("invalid label key \"{key}\""));
            }
            if let Some(bad) = vals.iter().find(|v| !valid_value(v)) {
                return Err(format!("invalid label value: \"{bad}\""));
            }
            reqs.push(req);
        }
        Ok(LabelSelector(reqs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `get` looks a label up by key.
    pub fn matches<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Eq(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEq(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
        })
    }
}

/// The fields a `fieldSelector` can name (what every resource supports on the real server).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Field {
    Name,
    Namespace,
}

/// A parsed `fieldSelector`: (field, equal?, value) requirements, all must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector(pub Vec<(Field, bool, String)>);

impl FieldSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, eq, v) = if let Some((k, v)) = part.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = part.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = part.split_once('=') {
                (k, true, v)
            } else {
                return Err(format!(
                    "invalid selector: '{part}'; can't understand '{part}'"
                ));
            };
            let field = match k.trim() {
                "metadata.name" => Field::Name,
                "metadata.namespace" => Field::Namespace,
                other => return Err(format!("field label not supported: {other}")),
            };
            reqs.push((field, eq, v.trim().to_string()));
        }
        Ok(FieldSelector(reqs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, name: &str, namespace: &str) -> bool {
        self.0.iter().all(|(f, eq, v)| {
            let actual = match f {
                Field::Name => name,
                Field::Namespace => namespace,
            };
            (actual == v) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(sel: &str, labels: &[(&str, &str)]) -> bool {
        LabelSelector::parse(sel)
            .unwrap()
            .matches(|k| labels.iter().find(|(lk, _)| *lk == k).map(|(_, v)| *v))
    }

    #[test]
    fn label_ops() {
        let l = [
            ("app", "web"),
            ("tier", "front"),
            ("krateo.io/composition-id", "x-1"),
        ];
        assert!(m("app=web", &l));
        assert!(m("app==web,tier=front", &l));
        assert!(!m("app!=web", &l));
        assert!(m("app!=db", &l));
        assert!(m("app in (db, web)", &l));
        assert!(!m("app notin (db,web)", &l));
        assert!(m("missing notin (a)", &l));
        assert!(m("tier,krateo.io/composition-id", &l));
        assert!(m("!missing", &l));
        assert!(!m("!app", &l));
        assert!(m("", &l));
        assert!(m("app in (web),tier notin (back)", &l));
    }

    #[test]
    fn label_errors() {
        assert!(LabelSelector::parse("app in (a").is_err());
        assert!(LabelSelector::parse("a b=c").is_err());
        assert!(LabelSelector::parse("app=a,,b").is_err());
        assert!(LabelSelector::parse("app=a b").is_err());
    }

    #[test]
    fn fields() {
        let f = FieldSelector::parse("metadata.name=a,metadata.namespace!=kube-system").unwrap();
        assert!(f.matches("a", "default"));
        assert!(!f.matches("a", "kube-system"));
        assert!(!f.matches("b", "default"));
        assert!(FieldSelector::parse("spec.nodeName=x").is_err());
        assert!(FieldSelector::parse("").unwrap().is_empty());
    }
}
