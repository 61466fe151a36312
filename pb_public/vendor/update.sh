#!/bin/sh
# Re-vendor the dashboard's browser libraries (a developer's step; VERSIONS.md says what).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
npm init -y >/dev/null
npm install --no-audit --no-fund pocketbase@0.28.1 @nats-io/nats-core@3.4.0 \
  @nats-io/nkeys@2.0.3 @nats-io/nuid@3.0.0 uplot@1.6.32 esbuild@0.28.2
printf '%s\n' 'export { wsconnect, jwtAuthenticator } from "@nats-io/nats-core";' \
  'export { createUser, fromSeed } from "@nats-io/nkeys";' > entry.js
./node_modules/.bin/esbuild entry.js --bundle --format=esm --minify --target=es2020 \
  --outfile="$here/nats.min.js"
sed 's#//\# sourceMappingURL=pocketbase.es.mjs.map##' \
  node_modules/pocketbase/dist/pocketbase.es.mjs > "$here/pocketbase.es.mjs"
cp node_modules/uplot/dist/uPlot.iife.min.js node_modules/uplot/dist/uPlot.min.css "$here/"
cp node_modules/pocketbase/LICENSE.md "$here/licenses/pocketbase-LICENSE.md"
cp node_modules/@nats-io/nats-core/LICENSE "$here/licenses/nats-core-LICENSE"
cp node_modules/@nats-io/nkeys/LICENSE "$here/licenses/nkeys-LICENSE"
cp node_modules/@nats-io/nuid/LICENSE "$here/licenses/nuid-LICENSE"
cp node_modules/uplot/LICENSE "$here/licenses/uplot-LICENSE"
