"""One self-contained HTML page: plotly.js inlined from the installed plotly package (no CDN, so
the page works offline from a file: URL), figures and page data embedded as JSON.

Strings from a run (layer names from a checkpoint, labels and errors from a study.db, run.json
values) are data, never markup: every one written into the HTML goes through `esc`, the JSON
blocks cannot end their element or open a comment (`_script_json`), and the page's own script
builds its tables with textContent. A Content-Security-Policy (`csp`) lets the page run only its
own inline scripts (by hash) and load nothing from the network."""

from __future__ import annotations

import base64
import hashlib
import html
import json
from functools import lru_cache

import plotly.io as pio
from plotly.offline import get_plotlyjs

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
main{max-width:1500px;margin:0 auto;padding:1em 2em 3em}
h1{font-size:1.6em;margin:.6em 0 .2em} h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.lede{color:#444;max-width:75em}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:1em} @media(max-width:1000px){.grid2{grid-template-columns:1fr}}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.8em 1em}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(280px,1fr));gap:1em}
.card h3{margin:.1em 0 .4em;font-size:1.05em} .card .big{font-size:1.3em;font-weight:600} .card .name{font-weight:600}
.muted{color:#666;font-size:.9em} .warn{color:#b00020;font-weight:600}
table{border-collapse:collapse;background:#fff} th,td{border:1px solid #ddd;padding:3px 7px;font-size:13px}
th{background:#f0f0f0;text-align:left;position:sticky;top:0} td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.base td{background:#fff4f4} tr.front td:first-child{border-left:4px solid #1f77b4}
tr.recipe td:first-child{border-left:4px solid #ff7f0e}
td.name{min-width:16em} td.origin{min-width:14em;color:#666;font-size:12px}  /* a move's origin runs long */
.scroll{overflow-x:auto;max-width:100%}
sup.mark{font-size:.75em;color:#555} a.mark{text-decoration:none}
code,pre{background:#f3f3f3;border-radius:3px} pre{padding:.5em;white-space:pre-wrap;word-break:break-all;font-size:12px}
select{font-size:14px;padding:2px 4px}
.plot{background:#fff;border:1px solid #ddd;border-radius:6px;min-height:200px}
dl.prov dt{font-weight:600;margin-top:.5em} dl.prov dd{margin-left:1.5em}
.kind-measured{color:#1b7a1b} .kind-estimated,.kind-predicted{color:#b35900} .kind-planned,.kind-computed{color:#225}
"""

LOADER = """
const CONFIG = {responsive: true, displaylogo: false};
const FIGURES = JSON.parse(document.getElementById('figures').textContent);
const PAGE = JSON.parse(document.getElementById('page-data').textContent);
function draw(id, spec) { return Plotly.react(document.getElementById(id), spec.data, spec.layout, CONFIG); }
for (const [id, spec] of Object.entries(FIGURES)) { if (document.getElementById(id)) draw(id, spec); }
"""


def _script_json(payload) -> str:
    """JSON safe inside <script type=application/json>: no `<`, `>` or `&` at all (each as a JSON
    escape, which JSON.parse reads back), so neither `</script` nor `<!--` can end or derail the element."""
    text = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def figure_spec(fig) -> dict:
    """A plotly figure as plain JSON data (plotly's own encoder: numpy arrays, NaN -> null)."""
    return json.loads(pio.to_json(fig, validate=True))


def mark(m: str | None) -> str:
    return f'<sup class="mark"><a class="mark" href="#prov-{esc(m)}">[{esc(m)}]</a></sup>' if m else ""


def esc(value) -> str:
    """The one escaping function: any value as HTML text, a quoted attribute value, or text plotly
    draws (titles, axis labels, legends, hover: plotly reads a subset of HTML tags in them and
    decodes &amp; &lt; &gt; and numeric entities, not &quot;, hence " as &#34;)."""
    return html.escape("" if value is None else str(value), quote=True).replace("&quot;", "&#34;")


def _script_hash(script: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"


@lru_cache(maxsize=1)
def _plotly_js() -> tuple[str, str]:
    """(plotly.js, its CSP hash source), computed once per process."""
    script = get_plotlyjs()
    return script, _script_hash(script)


def csp(*scripts: str) -> str:
    """The page's Content-Security-Policy: nothing from the network (default-src 'none'), no
    script but `scripts` (the page's inline scripts, allowed by their sha256, so an injected
    element or event handler never runs), styles and images only inline / data: (plotly sets
    styles and draws its PNG download through data: and blob: images), no forms, no <base>."""
    hashes = " ".join(h if h.startswith("'sha256-") else _script_hash(h) for h in scripts)
    return ("default-src 'none'; " f"script-src {hashes}; " "style-src 'unsafe-inline'; img-src data: blob:; "
            "font-src data:; base-uri 'none'; form-action 'none'")


def data_url(payload: dict) -> str:
    return "data:application/json;base64," + base64.b64encode(json.dumps(payload, indent=2).encode()).decode()


def render(*, title: str, body: str, figures: dict[str, dict], data: dict, script: str = "") -> str:
    """The whole page. `figures` maps element ids to figure specs; `data` is what `script` reads
    as PAGE. `body` is HTML built with `esc` around every value; `script` is a constant of this
    package (never built from data: the CSP allows it by its hash)."""
    plotly_js, plotly_hash = _plotly_js()
    page_script = f"{LOADER}\n{script}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{esc(csp(plotly_hash, page_script))}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title><style>{CSS}</style>
<script>{plotly_js}</script></head>
<body><main>
{body}
</main>
<script type="application/json" id="figures">{_script_json(figures)}</script>
<script type="application/json" id="page-data">{_script_json(data)}</script>
<script>{page_script}</script>
</body></html>"""


def fmt_bytes(value) -> str:
    if value is None:
        return "—"
    return f"{value / 1024:,.1f}"


def fmt(value, digits: int = 3, suffix: str = "") -> str:
    """A figure as HTML text: floats rounded, anything else (an int, or a string a doctored study
    put where a number belongs) escaped."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return esc(f"{value:,.{digits}f}{suffix}")
    return esc(f"{value}{suffix}")
