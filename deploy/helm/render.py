"""Renders the chart with Helm's own engine (helm-python-sdk embeds Helm) and lints it.

Usage: python3 render.py CHART_DIR OUT_DIR [VALUES_JSON]. Writes one file per template into
OUT_DIR, with the chart's values overridden by VALUES_JSON if given; exits non-zero on a render
error or a lint error. `cargo xtask test` runs it, then parses the output into Kubernetes API
types.
"""
import json
import pathlib
import sys

from helm_python import chart as helm_chart

chart_dir, out_dir = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
values = json.loads(sys.argv[3]) if len(sys.argv) > 3 else None
out_dir.mkdir(parents=True, exist_ok=True)
lint = helm_chart.lint(str(chart_dir), strict=True)
# Severities: 0 unknown, 1 info, 2 warning, 3 error. Anything above info fails.
problems = [m for m in lint.get("messages", []) if m.get("severity", 0) > 1] + lint.get("errors", [])
if problems:
    print(json.dumps(lint, indent=2), file=sys.stderr)
    sys.exit(f"helm lint: {len(problems)} problem(s)")
with helm_chart.Chart.load(str(chart_dir)) as chart:
    manifests = chart.render(values=values, name="mptcpify", namespace="mptcpify-system", is_install=True)
for path, text in sorted(manifests.items()):
    if not text.strip() or path.endswith(".tpl"):
        continue
    target = out_dir / pathlib.Path(path).name
    target.write_text(text)
    print(target)
