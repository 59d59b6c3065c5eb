//! Reference pods as JSON bytes without building a `Value` per pod: each size has two templates
//! (with and without the composition label), the serialized JSON of a pod whose `i`-dependent
//! strings are placeholders; pod `i` is the template with its strings written in. The bytes are
//! those of `serde_json::to_vec(&PodGen::pod(i))` (tests compare them over a range of `i`).

use std::io::Write;

use serde_json::Value;

/// A string of pod `i` that depends on `i`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Slot {
    Namespace,
    Name,
    GenerateName,
    AppName,
    AppInstance,
    CompositionId,
    OwnerName,
    OwnerUid,
    ConfigMap,
    NodeName,
    HostIp,
    PodIp,
    Image { c: usize },
    ImageId,
    ContainerId,
    EnvValue { c: usize, e: usize },
}

impl Slot {
    /// The string of pod `i`.
    pub(super) fn text(self, i: usize) -> String {
        let mut out = Vec::with_capacity(64);
        self.write_text(i, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Appends the string of pod `i` (unquoted, as it is: every slot is plain ASCII).
    fn write_text(self, i: usize, out: &mut Vec<u8>) {
        let app = i % 97;
        let h = mix(i as u64);
        // Writing into a Vec cannot fail.
        let _ = match self {
            Slot::Namespace => write!(
                out,
                "{}",
                super::namespace_name(i / super::PODS_PER_NAMESPACE)
            ),
            Slot::Name => write!(out, "app-{app:02}-7d9f8b6c5d-{i:07x}"),
            Slot::GenerateName => write!(out, "app-{app:02}-7d9f8b6c5d-"),
            Slot::AppName => write!(out, "app-{app:02}"),
            Slot::AppInstance => write!(out, "app-{app:02}-{}", i % 5),
            Slot::CompositionId => write!(out, "{}", hex_uuid(mix(app as u64), 7)),
            Slot::OwnerName => write!(out, "app-{app:02}-7d9f8b6c5d"),
            Slot::OwnerUid => write!(out, "{}", hex_uuid(mix(app as u64 + 1000), 9)),
            Slot::ConfigMap => write!(out, "app-{app:02}-config"),
            Slot::NodeName => write!(out, "node-{:03}", i % 50),
            Slot::HostIp => write!(out, "192.168.1.{}", i % 50),
            Slot::PodIp => write!(out, "10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
            Slot::Image { c } => write!(
                out,
                "registry.example.com/team/app-{}:1.{c}.{}",
                i % 97,
                i % 13
            ),
            Slot::ImageId => write!(
                out,
                "registry.example.com/team/app@sha256:{:016x}{:016x}{:016x}{:016x}",
                h,
                mix(h),
                mix(h + 1),
                mix(h + 2)
            ),
            Slot::ContainerId => write!(
                out,
                "containerd://{:016x}{:016x}{:016x}{:016x}",
                mix(h + 3),
                mix(h + 4),
                mix(h + 5),
                mix(h + 6)
            ),
            Slot::EnvValue { c, e } => {
                write!(out, "value-{:016x}", mix((i * 131 + c * 17 + e) as u64))
            }
        };
    }
}

/// Whether pod `i` carries the Krateo composition label (a third of them do).
pub(super) fn has_composition(i: usize) -> bool {
    i.is_multiple_of(3)
}

pub(super) fn hex_uuid(a: u64, b: u64) -> String {
    let x = (a as u128) << 64 | b as u128;
    let s = format!("{x:032x}");
    format!(
        "{}-{}-4{}-8{}-{}",
        &s[0..8],
        &s[8..12],
        &s[13..16],
        &s[17..20],
        &s[20..32]
    )
}

pub(super) fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51afd7ed558ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ceb9fe1a85ec53);
    x ^ (x >> 33)
}

/// A pod's serialized JSON cut at its `i`-dependent strings.
#[derive(Debug)]
pub(super) struct Template {
    /// The JSON with the strings (and their quotes) left out.
    text: Vec<u8>,
    /// Where each string goes in `text`, in order.
    holes: Vec<(usize, Slot)>,
}

/// A placeholder's serialized form: `"\u0001<n>\u0001"` (no pod string holds a control
/// character, so serde_json escapes it and nothing else looks like it).
const MARK: &[u8] = b"\\u0001";

impl Template {
    /// Serializes a pod made by `build` with placeholder strings and cuts it at them.
    pub(super) fn new(build: impl FnOnce(&mut dyn FnMut(Slot) -> String) -> Value) -> Template {
        let mut slots = Vec::new();
        let pod = build(&mut |slot| {
            slots.push(slot);
            format!("\u{1}{}\u{1}", slots.len() - 1)
        });
        let json = serde_json::to_vec(&pod).unwrap_or_default();
        let (mut text, mut holes) = (Vec::with_capacity(json.len()), Vec::new());
        let mut rest = &json[..];
        while let Some(at) = find(rest, MARK) {
            // `at` is just after the opening quote.
            text.extend_from_slice(&rest[..at - 1]);
            let after = &rest[at + MARK.len()..];
            let digits = after.iter().take_while(|b| b.is_ascii_digit()).count();
            let n: usize = std::str::from_utf8(&after[..digits])
                .ok()
                .and_then(|d| d.parse().ok())
                .unwrap_or(usize::MAX);
            let slot = slots.get(n).copied().unwrap_or(Slot::Name);
            holes.push((text.len(), slot));
            // Skip the digits, the closing mark and the closing quote.
            rest = &after[digits + MARK.len() + 1..];
        }
        text.extend_from_slice(rest);
        Template { text, holes }
    }

    /// Appends pod `i`'s JSON.
    pub(super) fn write(&self, i: usize, out: &mut Vec<u8>) {
        let mut from = 0;
        for &(at, slot) in &self.holes {
            out.extend_from_slice(&self.text[from..at]);
            out.push(b'"');
            slot.write_text(i, out);
            out.push(b'"');
            from = at;
        }
        out.extend_from_slice(&self.text[from..]);
    }

    pub(super) fn len_hint(&self) -> usize {
        self.text.len() + 48 * self.holes.len()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
