#!/usr/bin/env bash
# The ingester's rooms stay small (issue 20): no source file over 600 lines unless
# docs/architecture.md names it under "Files over 600 lines" and says why. Functions over 80
# lines are clippy's `too_many_lines` (crates/ingester/clippy.toml), checked by `cargo clippy`.
# And arrows point down: a folder never imports from one above it in docs/architecture.md's tree.
set -euo pipefail
cd "$(dirname "$0")/.."
limit=600
allowed=$(sed -n '/^### Files over 600 lines/,/^#/p' docs/architecture.md)
status=0
while IFS= read -r file; do
    lines=$(wc -l <"$file")
    if [ "$lines" -gt "$limit" ] && ! grep -qF "\`${file#crates/ingester/}\`" <<<"$allowed"; then
        echo "$file: $lines lines (over $limit; split it, or say why in docs/architecture.md, \"Files over 600 lines\")" >&2
        status=1
    fi
done < <(find crates/ingester/src -name '*.rs' | sort)

# Top to bottom, as in docs/architecture.md, "The tree".
layers=(commands pipeline storage kubernetes telemetry config row)
for i in "${!layers[@]}"; do
    for above in "${layers[@]:0:i}"; do
        if grep -rnE "crate::${above}\b" "crates/ingester/src/${layers[i]}" >&2; then
            echo "crates/ingester/src/${layers[i]} imports from ${above}, a folder above it" >&2
            status=1
        fi
    done
done
exit "$status"
