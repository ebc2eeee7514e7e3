# Sourced after common.sh: makes node's official `openai` package available
# in $NODE_DIR ($BUILD_DIR/node), installing it with npm once (cached there).
# Without node, or when npm cannot reach its registry, the test is skipped
# (exit 77) with the reason.

command -v node >/dev/null 2>&1 || skip "node is not installed (Debian package nodejs)"

if [ ! -f "$NODE_DIR/node_modules/openai/package.json" ]; then
    command -v npm >/dev/null 2>&1 || skip "npm is not installed (Debian package npm)"
    mkdir -p "$NODE_DIR" || skip "cannot create $NODE_DIR"
    # One install at a time when several server tests run in parallel.
    (
        flock -w 300 9 || exit 1
        [ -f "$NODE_DIR/node_modules/openai/package.json" ] && exit 0
        # Few, short retries: without a registry this should skip soon.
        timeout 300 npm install --prefix "$NODE_DIR" --no-audit --no-fund --loglevel=error \
            --fetch-retries=1 --fetch-retry-mintimeout=2000 --fetch-retry-maxtimeout=5000 \
            --fetch-timeout=60000 'openai@^4' >"$WORK/npm.log" 2>&1
    ) 9>"$NODE_DIR/.install.lock"
    if [ ! -f "$NODE_DIR/node_modules/openai/package.json" ]; then
        # npm's first error lines say why (e.g. ENOTFOUND registry.npmjs.org).
        grep -m 4 -E '^npm (error|ERR!)' "$WORK/npm.log" 2>/dev/null | sed 's/^/  /'
        skip "npm could not install the openai package into $NODE_DIR (registry $(npm config get registry 2>/dev/null) out of reach?)"
    fi
fi
OPENAI_VERSION=$(node -p "require('$NODE_DIR/node_modules/openai/package.json').version")
echo "openai npm package $OPENAI_VERSION, node $(node --version)"
