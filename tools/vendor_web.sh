#!/usr/bin/env bash
# Vendor the page's JavaScript into the package (no CDN at run time): NiiVue's UMD bundle and
# Swagger UI (for /docs), pinned, with their licences. Rerun to update; commit what changes.
#   tools/vendor_web.sh            needs node + npm and the npm registry (not needed to run seg-edge)
set -euo pipefail
NIIVUE=0.69.0
SWAGGER=5.35.0
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="$ROOT/src/seg_edge/serve/static/vendor"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
# each package in its own folder, so that the licence list holds only what NiiVue's bundle includes;
# --ignore-scripts: nothing from the registry runs here (swagger-ui-dist's telemetry dependency included)
for pair in "niivue @niivue/niivue@$NIIVUE" "swagger swagger-ui-dist@$SWAGGER"; do
  set -- $pair
  mkdir -p "$WORK/$1" && (cd "$WORK/$1" && printf '{"name": "vendor-%s", "private": true}\n' "$1" > package.json &&
    npm install --silent --no-audit --no-fund --ignore-scripts --omit=optional "$2")
done
cd "$WORK/niivue"
NV=node_modules/@niivue/niivue
mkdir -p "$DEST/niivue" "$DEST/swagger-ui"
cp "$NV/dist/niivue.umd.js" "$DEST/niivue/niivue.umd.js"
# NiiVue's npm package carries no licence file: its licence (BSD-2-Clause, package.json) is
# written out here, and the licences of the packages its bundle includes are appended.
cat > "$DEST/niivue/LICENSE" <<'LIC'
BSD 2-Clause License

Copyright (c) 2021, Niivue
All rights reserved.

Redistribution and use in source and binary forms, with or without
modification, are permitted provided that the following conditions are met:

1. Redistributions of source code must retain the above copyright notice, this
   list of conditions and the following disclaimer.

2. Redistributions in binary form must reproduce the above copyright notice,
   this list of conditions and the following disclaimer in the documentation
   and/or other materials provided with the distribution.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS"
AND ANY EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE
IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE
DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR CONTRIBUTORS BE LIABLE
FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR
SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER
CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT LIABILITY,
OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE
OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
LIC
{
  echo "Packages bundled into niivue.umd.js (@niivue/niivue $NIIVUE), with their licences."
  for dir in $(ls -d node_modules/* node_modules/@*/* | grep -v -E '^node_modules/@[^/]*$|niivue' | sort); do
    name=$(node -p "require('./$dir/package.json').name")
    version=$(node -p "require('./$dir/package.json').version")
    licence=$(node -p "require('./$dir/package.json').license")
    echo; echo "=================================================================="
    echo "$name $version ($licence)"; echo
    cat "$dir"/[Ll][Ii][Cc][Ee][Nn][Ss][Ee]* 2>/dev/null || echo "(no licence file in the package; licence: $licence)"
  done
} > "$DEST/niivue/THIRD_PARTY_LICENSES.txt"
SW="$WORK/swagger/node_modules/swagger-ui-dist"
cp "$SW/swagger-ui-bundle.js" "$SW/swagger-ui.css" "$SW/LICENSE" "$SW/NOTICE" "$DEST/swagger-ui/"
cp "$SW/swagger-ui-bundle.js.LICENSE.txt" "$DEST/swagger-ui/"
{
  echo "@niivue/niivue $NIIVUE  sha256 $(sha256sum "$DEST/niivue/niivue.umd.js" | cut -d' ' -f1)  niivue/niivue.umd.js"
  echo "swagger-ui-dist $SWAGGER  sha256 $(sha256sum "$DEST/swagger-ui/swagger-ui-bundle.js" | cut -d' ' -f1)  swagger-ui/swagger-ui-bundle.js"
} > "$DEST/VERSIONS"
cat "$DEST/VERSIONS"
