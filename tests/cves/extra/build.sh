#!/usr/bin/env bash
# The second CVE corpus: three more C libraries with real security fixes from Debian 12
# (expat, openjpeg2, libxml2), built as DLLs by ../shared/cves/build.sh in its four
# builds, with its ground truth, into $HPCVES_EXTRA (default ~/.cache/hpatch-cves-extra).
# hpatch was not developed against these; tests/cves holds it to them as to the first.
#
# The shared build reads its recipes and import definitions beside itself, so it runs
# from a scratch copy with this folder's recipes and import names added.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
shared=${CVES_SHARED:-$(cd "$here/../../.." && pwd)/../shared/cves}
out=${HPCVES_EXTRA:-$HOME/.cache/hpatch-cves-extra}
[ -f "$shared/build.sh" ] || { echo "build.sh: no CVE corpus build at $shared" >&2; exit 1; }
tool=$(mktemp -d)
trap 'rm -rf "$tool"' EXIT
cp -r "$shared"/. "$tool"/
chmod -R u+w "$tool"
cp "$here"/recipes/*.sh "$tool"/recipes/
grep -v '^#' "$here/defs.add" | while read -r def name; do
  grep -qx "$name" "$tool/defs/$def.def" || echo "$name" >> "$tool/defs/$def.def"
done
HPCVES="$out" LIBS="expat openjpeg2 libxml2" bash "$tool/build.sh"
