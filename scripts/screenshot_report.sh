#!/usr/bin/env bash
# Render a sweep's report.html in headless Chromium (Debian's `chromium` package) and save a
# screenshot of the whole page, to look at the report as a reader's browser shows it.
#   bash scripts/screenshot_report.sh SWEEP_DIR [OUT_PNG] [WIDTH] [HEIGHT]
# OUT_PNG defaults to SWEEP_DIR/report-screenshot.png; the window is WIDTH x HEIGHT pixels
# (default 1280 x 9000: tall enough for a whole report; the part below the report stays white).
set -euo pipefail
SWEEP_DIR=$1
OUT=${2:-$SWEEP_DIR/report-screenshot.png}
WIDTH=${3:-1280}
HEIGHT=${4:-9000}
BROWSER=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$BROWSER" ]; then
  echo "screenshot_report.sh: no chromium on PATH; install it with: apt-get install chromium" >&2
  exit 2
fi
if [ ! -f "$SWEEP_DIR/report.html" ]; then
  echo "screenshot_report.sh: $SWEEP_DIR/report.html not found; write it with: loraexp report $SWEEP_DIR" >&2
  exit 2
fi
PAGE="file://$(cd "$SWEEP_DIR" && pwd)/report.html"
"$BROWSER" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size="$WIDTH,$HEIGHT" \
  --screenshot="$OUT" "$PAGE" 2>/dev/null
echo "screenshot of $PAGE: $OUT"
