//! The rewriter: writes an object's JSON text with a plan applied. Only the objects on a
//! path are split into members (as `RawValue` slices); every other member is copied as text.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Action, Node, REDACTED};

/// The text written so far and what was done to it.
pub(super) struct Rewriter {
    pub(super) out: Vec<u8>,
    /// Values replaced by [`REDACTED`].
    pub(super) redacted: u64,
    /// Bytes of the dropped members.
    pub(super) pruned_bytes: u64,
    /// Byte range of the top-level `status` value inside `out`.
    pub(super) status: Option<Range<usize>>,
}

fn first_byte(v: &RawValue) -> u8 {
    v.get().bytes().next().unwrap_or(b'n')
}

impl Rewriter {
    /// Writes the object `text` with `node`'s children applied; `Ok(false)` when `text` is
    /// not an object.
    pub(super) fn object(
        &mut self,
        text: &str,
        node: &Node,
        top: bool,
    ) -> serde_json::Result<bool> {
        if text.trim_start().as_bytes().first() != Some(&b'{') {
            return Ok(false);
        }
        self.members(text, node, |w, key, value, child| {
            let start = w.out.len();
            match child {
                None => w.out.extend_from_slice(value.get().as_bytes()),
                Some(c) => w.value(value, c)?,
            }
            if top && key == "status" {
                w.status = Some(start..w.out.len());
            }
            Ok(())
        })?;
        Ok(true)
    }

    /// Writes the object `text` member by member: a member whose node says `Drop` is left out
    /// (and counted), every other is written by `write` after its key.
    fn members(
        &mut self,
        text: &str,
        node: &Node,
        mut write: impl FnMut(&mut Self, &str, &RawValue, Option<&Node>) -> serde_json::Result<()>,
    ) -> serde_json::Result<()> {
        let members: Members<'_> = serde_json::from_str(text)?;
        self.out.push(b'{');
        let mut first = true;
        for (key, value) in &members.0 {
            let child = node.child(key);
            if child.is_some_and(|c| c.action == Action::Drop) {
                self.pruned_bytes += (key.len() + 3 + value.get().len()) as u64;
                continue;
            }
            if !first {
                self.out.push(b',');
            }
            first = false;
            serde_json::to_writer(&mut self.out, key.as_ref())?;
            self.out.push(b':');
            write(self, key, value, child)?;
        }
        self.out.push(b'}');
        Ok(())
    }

    fn value(&mut self, v: &RawValue, node: &Node) -> serde_json::Result<()> {
        match node.action {
            // The member loop never descends into a dropped member.
            Action::Drop => Ok(()),
            Action::Redact => self.redact(v),
            // A pruned key of a redacted object (`/Secret:data.tls\.key`) goes.
            Action::RedactMembers if first_byte(v) == b'{' => {
                self.members(v.get(), node, |w, _, value, _| w.redact(value))
            }
            Action::RedactMembers => self.redact(v),
            Action::Descend => match first_byte(v) {
                b'{' => self.object(v.get(), node, false).map(|_| ()),
                b'[' => {
                    let items: Vec<&RawValue> = serde_json::from_str(v.get())?;
                    self.out.push(b'[');
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            self.out.push(b',');
                        }
                        self.value(item, node)?;
                    }
                    self.out.push(b']');
                    Ok(())
                }
                _ => {
                    self.out.extend_from_slice(v.get().as_bytes());
                    Ok(())
                }
            },
        }
    }

    /// Replaces a value with the marker; `null` stays (it holds nothing).
    fn redact(&mut self, v: &RawValue) -> serde_json::Result<()> {
        if v.get() == "null" {
            self.out.extend_from_slice(b"null");
        } else {
            serde_json::to_writer(&mut self.out, REDACTED)?;
            self.redacted += 1;
        }
        Ok(())
    }
}

/// An object's members in order, each value as its JSON text.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

/// A key borrowed from the text when it has no escapes.
#[derive(Deserialize)]
struct Key<'a>(#[serde(borrow)] Cow<'a, str>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
                    members.push((k, map.next_value::<&'de RawValue>()?));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(V)
    }
}
