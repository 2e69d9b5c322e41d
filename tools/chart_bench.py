"""Compare two chart libraries for the dashboard, as the page uses a chart: in headless Chromium.

Each library draws the same chart as the dashboard's (actual, forecast and its interval band, over time)
from ``--points`` points, then takes ``--updates`` updates of one new point each, redrawn at once.
Reported per library: the bundle's size (raw and gzip), the time to load and run the script, the first
render, and the median and worst time of an update. Each figure is the median of ``--repeat`` fresh pages.

The bundles come from their npm packages (``npm pack``, which needs the npm registry), or from ``--uplot``
and ``--chartjs`` paths. A developer's tool: ``python -m tools.chart_bench``; figures depend on the machine
and its load, so compare the two side by side, never with figures from elsewhere.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import statistics
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from playwright.sync_api import Route, sync_playwright

ORIGIN = "http://bench.local"
PAGE = f"""<!doctype html><html><head><meta charset="utf-8"></head>
<body><div id="chart" style="width:900px;height:320px"><canvas id="canvas"></canvas></div>
<script>window.t0 = performance.now();</script><script src="{ORIGIN}/lib.js"></script>
<script>window.loaded = performance.now() - window.t0;</script></body></html>"""

# builds a chart of n points and answers {render_ms, update_ms: [...]}; `lib` picks the library's code
DRIVER = """async ([lib, n, updates]) => {
  const t = [], actual = [], forecast = [], lower = [], upper = [];
  for (let i = 0; i < n; i++) {
    t.push(i); const v = 20 + 5 * Math.sin(i / 20) + Math.random();
    actual.push(v); forecast.push(v + 0.5); lower.push(v - 2); upper.push(v + 3);
  }
  const frame = () => new Promise(r => requestAnimationFrame(() => r()));
  let chart, push;
  const start = performance.now();
  if (lib === 'uplot') {
    const el = document.getElementById('chart');
    chart = new uPlot({width: 900, height: 320, series: [{}, {label: 'actual', stroke: 'black'},
      {label: 'forecast', stroke: 'blue'}, {label: 'lower'}, {label: 'upper'}],
      bands: [{series: [4, 3], fill: 'rgba(0,0,255,0.1)'}]}, [t, actual, forecast, lower, upper], el);
    push = (i, v) => { t.push(i); actual.push(v); forecast.push(v); lower.push(v - 2); upper.push(v + 3);
      chart.setData([t, actual, forecast, lower, upper]); };
  } else {
    const ctx = document.getElementById('canvas');
    chart = new Chart(ctx, {type: 'line', data: {labels: t, datasets: [
      {label: 'actual', data: actual, borderColor: 'black', pointRadius: 0},
      {label: 'forecast', data: forecast, borderColor: 'blue', pointRadius: 0},
      {label: 'lower', data: lower, pointRadius: 0},
      {label: 'upper', data: upper, pointRadius: 0, fill: '-1', backgroundColor: 'rgba(0,0,255,0.1)'}]},
      options: {animation: false, responsive: false, parsing: false, normalized: true,
        scales: {x: {type: 'linear'}}}});
    const columns = [actual, forecast, lower, upper];
    chart.data.datasets.forEach((d, k) => d.data = columns[k].map((y, i) => ({x: t[i], y})));
    chart.update();
    push = (i, v) => { t.push(i);
      [v, v, v - 2, v + 3].forEach((y, k) => chart.data.datasets[k].data.push({x: i, y}));
      chart.update(); };
  }
  await new Promise(r => queueMicrotask(r));
  const render = performance.now() - start;
  await frame();
  const times = [];
  for (let u = 0; u < updates; u++) {
    const s = performance.now();
    push(n + u, 20 + Math.random());
    await new Promise(r => queueMicrotask(r));  // after uPlot's redraw, which it queues as a microtask
    times.push(performance.now() - s);
    if (u % 10 === 0) await frame();
  }
  return {render_ms: render, update_ms: times};
}"""


@dataclass
class Figures:
    raw_bytes: int
    gzip_bytes: int
    load_ms: float
    render_ms: float
    update_median_ms: float
    update_max_ms: float


def packed(package: str, member: str, into: Path) -> Path:
    """``member`` of the npm package ``package``, fetched with ``npm pack`` into ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        ["npm", "pack", "--silent", package], cwd=into, check=True, capture_output=True, text=True
    ).stdout.split()[-1]
    with tarfile.open(into / out) as tar:
        tar.extractall(into, filter="data")
    return into / "package" / member


def measure(chromium: str, lib: str, bundle: Path, points: int, updates: int, repeat: int) -> Figures:
    """The library's figures: each timing the median over ``repeat`` fresh pages."""
    code = bundle.read_bytes()
    runs: list[tuple[float, float, float, float]] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        try:
            for _ in range(repeat):
                page = browser.new_page()

                def serve(route: Route) -> None:
                    url = route.request.url
                    if url.endswith("/lib.js"):
                        route.fulfill(body=code, content_type="text/javascript")
                    else:
                        route.fulfill(body=PAGE, content_type="text/html")

                page.route(f"{ORIGIN}/**", serve)
                page.goto(f"{ORIGIN}/")
                loaded = float(page.evaluate("window.loaded"))
                result = page.evaluate(DRIVER, [lib, points, updates])
                times = result["update_ms"]
                runs.append((loaded, result["render_ms"], statistics.median(times), max(times)))
                page.close()
        finally:
            browser.close()
    med = [statistics.median(run[i] for run in runs) for i in range(4)]
    return Figures(len(code), len(gzip.compress(code)), *med)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.chart_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--uplot", type=Path, help="uPlot's uPlot.iife.min.js (default: from npm pack uplot)")
    parser.add_argument(
        "--chartjs", type=Path, help="Chart.js's chart.umd.min.js (default: npm pack chart.js)"
    )
    parser.add_argument("--points", type=int, default=2000, help="points on the chart before the updates")
    parser.add_argument("--updates", type=int, default=200, help="updates of one point each, timed")
    parser.add_argument("--repeat", type=int, default=3, help="fresh pages per library; figures are medians")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium", help="the browser")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        uplot = args.uplot or packed("uplot", "dist/uPlot.iife.min.js", Path(tmp) / "uplot")
        chartjs = args.chartjs or packed("chart.js", "dist/chart.umd.min.js", Path(tmp) / "chartjs")
        report = {
            lib: measure(args.chromium, lib, path, args.points, args.updates, args.repeat).__dict__
            for lib, path in (("uplot", uplot), ("chartjs", chartjs))
        }
    print(
        json.dumps(
            {"points": args.points, "updates": args.updates, "repeat": args.repeat, **report}, indent=1
        )
    )


if __name__ == "__main__":
    main()
